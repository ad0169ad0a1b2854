//! Image references: the checker every image in the Dockerfile and cloudbuild.yaml goes through.

/// A Docker image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, path
/// components lowercase; a single component is an official Docker Hub image (`rust:1.91`).
pub(super) fn image_problem(image: &str) -> Option<String> {
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
