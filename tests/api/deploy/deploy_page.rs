//! The deploy page (docs/deploy.md): what someone with a project needs, in order.

use super::cloudbuild::cloudbuild;
use super::read;

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
