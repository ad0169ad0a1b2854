//! The checker of cloudbuild.yaml: substitutions as Cloud Build reads them, keys, durations,
//! the files steps name, the shell they run.

use super::images::image_problem;
use serde_norway::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

/// Every string in `v`, however deeply nested, appended to `out`.
pub(super) fn strings_in(v: &Yaml, out: &mut Vec<String>) {
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
pub(super) fn cloudbuild_problems(text: &str, root: &Path) -> Vec<String> {
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
