//! `check-invariants`: read a project's items, orders and status documents and check that no
//! order was applied twice or lost (see `firestore_once_shop::invariants`). For reliability runs
//! and for operators after an incident.
//!
//! ```sh
//! check-invariants --initial stock.json [--project P] [--database D] [--json]
//! ```
//!
//! `stock.json` is `{"item_id": initial_stock, …}` for every item the run used (`-` reads
//! stdin). The project defaults to `GOOGLE_CLOUD_PROJECT`; `FIRESTORE_EMULATOR_HOST` and the
//! `ONCE_*_COLLECTION` variables are honoured as by the service. Exit status: 0 when every
//! invariant holds, 1 on any violation, 2 when the check could not run.

use anyhow::{bail, Context};
use firestore::{FirestoreDb, FirestoreDbOptions};
use firestore_once_core::config::Config;
use firestore_once_shop::invariants::{self, StockMap};
use firestore_once_shop::ShopConfig;
use std::io::Read;
use std::process::ExitCode;

const USAGE: &str =
    "usage: check-invariants --initial FILE|- [--project P] [--database D] [--json]";

struct Args {
    initial: String,
    project: Option<String>,
    database: Option<String>,
    json: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        initial: String::new(),
        project: None,
        database: None,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--initial" => a.initial = value("--initial")?,
            "--project" => a.project = Some(value("--project")?),
            "--database" => a.database = Some(value("--database")?),
            "--json" => a.json = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if a.initial.is_empty() {
        bail!("--initial is required\n{USAGE}");
    }
    Ok(a)
}

async fn run() -> anyhow::Result<bool> {
    let a = args()?;
    let config = Config::from_env()?;
    let mut shop = ShopConfig::from_env(&config.instance_id)?;
    shop.operations = config.collections.operations.clone();
    let text = if a.initial == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(&a.initial).with_context(|| format!("reading {}", a.initial))?
    };
    let initial: StockMap =
        serde_json::from_str(&text).context("--initial must be a JSON object of item → stock")?;
    let project = a
        .project
        .or(config.project_id.clone())
        .context("give --project or set GOOGLE_CLOUD_PROJECT")?;
    let db = FirestoreDb::with_options(
        FirestoreDbOptions::new(project)
            .with_database_id(a.database.unwrap_or(config.database_id.clone()))
            .with_request_timeout(config.firestore_timeout),
    )
    .await
    .context("connecting to Firestore")?;
    let report = invariants::verify(&db, &shop, &initial).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(report.ok())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("check-invariants: {e:#}");
            ExitCode::from(2)
        }
    }
}
