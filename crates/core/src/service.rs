//! The service: one guard, the kinds it runs and the routes they are served on. Every way work
//! arrives (an HTTP request, a redrive of a dead letter) goes through [`crate::ingest`] with
//! this same value, so a kind registered here is served, redriven and looked up alike.

use crate::config::{resolve_project_id, Config};
use crate::engine::{hashed_id, Registry};
use crate::faults::Faults;
use crate::guard::{workflow, Guard, GuardConfig};
use anyhow::Context;
use firestore::{FirestoreDb, FirestoreDbOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A domain key the console and `GET /operations/lookup` accept by name (`?{param}=…`), so an
/// operator can find an operation by the ID they know instead of its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The query parameter, e.g. `booking_id`.
    pub param: String,
    /// What the console's menu calls it, e.g. `Booking ID`.
    pub label: String,
    /// The kind whose raw key it is.
    pub kind: String,
}

/// Changes the OpenAPI document this service serves (a kind's request and answer shapes, the
/// paths of its routes), applied once when the document is first built.
#[cfg(feature = "server")]
pub type OpenApiExtension = Arc<dyn Fn(&mut utoipa::openapi::OpenApi) + Send + Sync>;

/// What every handler and every redrive shares. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    /// Runs operations exactly once.
    pub guard: Guard,
    /// Configuration.
    pub config: Arc<Config>,
    /// Project ID, for log trace fields.
    pub project_id: Arc<str>,
    /// The kinds served under `/tasks/{kind}` and the routes below.
    pub registry: Arc<Registry>,
    /// Where the workflow runner keeps task records and leases.
    pub workflows: Arc<workflow::Collections>,
    /// Routes (besides `/tasks/{kind}`) that serve one kind, e.g. `/votes` → `vote`;
    /// redrive finds a dead letter's kind here by its route.
    pub routes: Arc<BTreeMap<String, String>>,
    /// Domain keys the console and the lookup accept by name, the first being the default kind.
    pub lookups: Arc<Vec<Lookup>>,
    /// Test fault switches; `None` in production, so no request consults them.
    pub faults: Option<Arc<Faults>>,
    /// Additions to the served OpenAPI document.
    #[cfg(feature = "server")]
    pub(crate) openapi: Vec<OpenApiExtension>,
    /// The served document, built once on first request.
    #[cfg(feature = "server")]
    pub(crate) openapi_doc: Arc<std::sync::OnceLock<Result<String, String>>>,
}

impl Service {
    /// A service running the kinds of `registry` with `guard`; add routes and lookups with the
    /// builder methods below.
    pub fn new(
        guard: Guard,
        config: Config,
        project_id: impl Into<Arc<str>>,
        registry: Registry,
    ) -> Self {
        guard.metrics().set_enabled(config.metrics);
        let workflows = workflow::Collections {
            tasks: config.collections.tasks.clone(),
            leases: config.collections.leases.clone(),
        };
        Self {
            guard,
            config: Arc::new(config),
            project_id: project_id.into(),
            registry: Arc::new(registry),
            workflows: Arc::new(workflows),
            routes: Arc::default(),
            lookups: Arc::default(),
            faults: None,
            #[cfg(feature = "server")]
            openapi: Vec::new(),
            #[cfg(feature = "server")]
            openapi_doc: Arc::default(),
        }
    }

    /// Serve `kind` at `POST {route}` too (besides `/tasks/{kind}`), e.g. `/bookings` for
    /// `booking`: a route of your API's own shape, with the same deliveries, answers and dead
    /// letters.
    pub fn route(mut self, route: &str, kind: &str) -> Self {
        Arc::make_mut(&mut self.routes).insert(route.to_string(), kind.to_string());
        self
    }

    /// Let the console and `GET /operations/lookup?{param}=…` find an operation of `kind` by
    /// its raw key. The first lookup added is the default kind of a lookup by key.
    pub fn lookup(mut self, param: &str, label: &str, kind: &str) -> Self {
        Arc::make_mut(&mut self.lookups).push(Lookup {
            param: param.to_string(),
            label: label.to_string(),
            kind: kind.to_string(),
        });
        self
    }

    /// Add to the OpenAPI document served at `GET /openapi.json` (your kinds' shapes and
    /// routes); extensions run in the order added.
    #[cfg(feature = "server")]
    pub fn openapi(
        mut self,
        extend: impl Fn(&mut utoipa::openapi::OpenApi) + Send + Sync + 'static,
    ) -> Self {
        self.openapi.push(Arc::new(extend));
        self.openapi_doc = Arc::default();
        self
    }

    /// Arm the test fault switches.
    #[doc(hidden)]
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// The work a stored route names: `/tasks/{kind}`, or a route added with [`route`].
    ///
    /// [`route`]: Self::route
    pub fn target(&self, route: &str) -> Option<Target> {
        if let Some(kind) = self.routes.get(route) {
            return Some(Target::new(route, kind));
        }
        route
            .strip_prefix("/tasks/")
            .filter(|k| !k.is_empty() && !k.contains('/'))
            .map(Target::task)
    }

    /// The operation ID of a lookup: by a named domain key (`param`), or by `key` or
    /// `Idempotency-Key` of `kind` (default: the first lookup's kind).
    pub fn lookup_id(&self, param: &str, value: &str, kind: Option<&str>) -> Option<String> {
        let default = self.lookups.first().map(|l| l.kind.as_str());
        match param {
            "key" => Some(hashed_id(kind.or(default)?, value)),
            "idempotency_key" => Some(hashed_id(
                kind.or(default)?,
                &format!("idempotency-key:{value}"),
            )),
            "operation_id" => Some(value.to_string()),
            other => self
                .lookups
                .iter()
                .find(|l| l.param == other)
                .map(|l| hashed_id(&l.kind, value)),
        }
    }
}

impl From<&Config> for GuardConfig {
    fn from(c: &Config) -> Self {
        GuardConfig {
            operations: c.collections.operations.clone(),
            retention: c.retention,
            max_attempts: c.max_attempts,
            call_timeout: c.firestore_timeout,
            batch_max: c.batch_max,
            max_writes: c.max_commit_writes,
            budget: c.doc_budget,
            replay_cache_bytes: c.replay_cache_bytes,
            commit_from_known: c.commit_from_known,
        }
    }
}

/// A Firestore client for `project` (the emulator when `FIRESTORE_EMULATOR_HOST` is set).
/// `api_url` sends it elsewhere: a fault proxy in the tests.
pub async fn connect_db(
    config: &Config,
    project: &str,
    api_url: Option<String>,
) -> anyhow::Result<FirestoreDb> {
    let mut opts = FirestoreDbOptions::new(project.to_string())
        .with_database_id(config.database_id.clone())
        .with_request_timeout(config.firestore_timeout);
    opts.firebase_api_url = api_url;
    FirestoreDb::with_options(opts)
        .await
        .context("connecting to Firestore")
}

/// The service for `config` running `registry`: its project resolved (the environment, then
/// the metadata server), a Firestore client, and one guard.
pub async fn connect(config: Config, registry: Registry) -> anyhow::Result<Service> {
    let project_id = resolve_project_id(&config).await?;
    let db = connect_db(&config, &project_id, None).await?;
    let guard = Guard::new(db, GuardConfig::from(&config));
    Ok(Service::new(guard, config, project_id, registry))
}

/// What a delivery asks for: a kind, and the route it arrived on (stored on a dead letter so
/// a redrive sends it back the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The route, e.g. `/tasks/vote`.
    pub route: String,
    /// The registered kind it runs.
    pub kind: String,
}

impl Target {
    /// `kind` served at `route`.
    pub fn new(route: &str, kind: &str) -> Self {
        Self {
            route: route.to_string(),
            kind: kind.to_string(),
        }
    }

    /// `kind` at `/tasks/{kind}`.
    pub fn task(kind: &str) -> Self {
        Self {
            route: format!("/tasks/{kind}"),
            kind: kind.to_string(),
        }
    }
}
