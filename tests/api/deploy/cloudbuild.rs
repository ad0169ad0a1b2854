//! cloudbuild.yaml itself: well formed, its checker on broken samples, what the build must do,
//! and gcloud's own config loader when installed.

use super::cloudbuild_checker::{cloudbuild_problems, strings_in};
use super::{msrv, read, root};
use serde_norway::Value as Yaml;
use std::path::{Path, PathBuf};

/// The repository's cloudbuild.yaml, parsed.
pub(super) fn cloudbuild() -> Yaml {
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
