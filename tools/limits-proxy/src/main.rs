//! `limits-proxy`: run the proxy in front of a Firestore emulator until SIGTERM or Ctrl-C.
//!
//! Prints `limits-proxy listening on HOST:PORT admin HOST:PORT` on stdout once both ports
//! accept connections (a benchmark starts it with port 0 and reads that line).

use limits_proxy::{Limits, Proxy};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "\
limits-proxy: enforce production Firestore's write limits in front of the emulator

USAGE: limits-proxy --upstream HOST:PORT [OPTIONS]

  --upstream HOST:PORT            the Firestore emulator's gRPC address (required)
  --listen ADDR                   gRPC (h2c) address to listen on [default: 127.0.0.1:0]
  --admin ADDR                    admin HTTP address (GET /stats, POST /reset)
                                  [default: 127.0.0.1:0]
  --max-writes-per-commit N       writes one commit may carry, field transforms counted;
                                  0 = no limit [default: 500]
  --doc-writes-per-sec F          sustained commits a second per document; 0 = no limit
                                  [default: 1.0]
  --doc-burst F                   commits one document may take at once (>= 1) [default: 5]
  --database-writes-per-sec F     sustained writes a second over the database; 0 = no limit
                                  [default: 10000]
  --database-burst F              writes the database bucket holds
                                  [default: one second of --database-writes-per-sec]
  --refuse-delay-ms N             wait before answering a contention refusal [default: 100]
  --window-ms N                   sliding window of the busiest-document figure [default: 1000]
  -h, --help                      this text

Point the service at it with FIRESTORE_EMULATOR_HOST=<the listening address>.
";

/// The parsed command line.
struct Args {
    upstream: String,
    listen: SocketAddr,
    admin: SocketAddr,
    limits: Limits,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut upstream = None;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut admin = listen;
    let mut limits = Limits::default();
    let mut database_burst = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
        }
        fn addr(flag: &str, v: String) -> Result<SocketAddr, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not an IP:PORT address"))
        }
        match flag.as_str() {
            "--upstream" => upstream = Some(value()?),
            "--listen" => listen = addr(&flag, value()?)?,
            "--admin" => admin = addr(&flag, value()?)?,
            "--max-writes-per-commit" => limits.max_writes_per_commit = num(&flag, value()?)?,
            "--doc-writes-per-sec" => limits.doc_writes_per_sec = num(&flag, value()?)?,
            "--doc-burst" => limits.doc_burst = num(&flag, value()?)?,
            "--database-writes-per-sec" => limits.database_writes_per_sec = num(&flag, value()?)?,
            "--database-burst" => database_burst = Some(num(&flag, value()?)?),
            "--refuse-delay-ms" => limits.refuse_delay_ms = num(&flag, value()?)?,
            "--window-ms" => limits.window_ms = num(&flag, value()?)?,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    limits.database_burst = database_burst.unwrap_or(limits.database_writes_per_sec);
    let upstream = upstream.ok_or("--upstream HOST:PORT is required (see --help)")?;
    limits.validate().map_err(|e| e.to_string())?;
    Ok(Some(Args {
        upstream,
        listen,
        admin,
        limits,
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(why) => {
            eprintln!("limits-proxy: {why}");
            return ExitCode::from(2);
        }
    };
    let proxy = match Proxy::start_on(args.limits, args.upstream, args.listen, args.admin).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("limits-proxy: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "limits-proxy listening on {} admin {}",
        proxy.addr(),
        proxy.admin_addr()
    );
    let _ = out.flush();
    stop_signal().await;
    drop(proxy);
    ExitCode::SUCCESS
}

/// SIGTERM (Cloud Run, a benchmark ending its child) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Option<Args>, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_set_the_limits_and_defaults_hold_otherwise() {
        let a = args("--upstream 127.0.0.1:8085").unwrap().unwrap();
        assert_eq!(a.limits, Limits::default());
        assert_eq!(a.listen.to_string(), "127.0.0.1:0");
        let a = args(
            "--upstream h:1 --doc-writes-per-sec=0.5 --doc-burst 2 --max-writes-per-commit 10 \
             --database-writes-per-sec 100 --refuse-delay-ms 0 --window-ms 500 \
             --listen 0.0.0.0:9000 --admin 127.0.0.1:9001",
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.upstream, "h:1");
        assert_eq!(a.limits.doc_writes_per_sec, 0.5);
        assert_eq!(a.limits.doc_burst, 2.0);
        assert_eq!(a.limits.max_writes_per_commit, 10);
        assert_eq!(a.limits.database_writes_per_sec, 100.0);
        assert_eq!(a.limits.database_burst, 100.0);
        assert_eq!(a.limits.refuse_delay_ms, 0);
        assert_eq!(a.limits.window_ms, 500);
        assert_eq!(a.admin.port(), 9001);
    }

    #[test]
    fn bad_command_lines_are_refused_and_help_is_help() {
        assert!(args("").is_err());
        assert!(args("--upstream h:1 --doc-burst").is_err());
        assert!(args("--upstream h:1 --doc-burst x").is_err());
        assert!(args("--upstream h:1 --doc-burst 0.5").is_err());
        assert!(args("--upstream h:1 --bogus 1").is_err());
        assert!(args("--upstream h:1 --listen localhost").is_err());
        assert!(args("--help").unwrap().is_none());
    }

    #[test]
    fn the_help_names_every_flag() {
        for flag in [
            "--upstream",
            "--listen",
            "--admin",
            "--max-writes-per-commit",
            "--doc-writes-per-sec",
            "--doc-burst",
            "--database-writes-per-sec",
            "--database-burst",
            "--refuse-delay-ms",
            "--window-ms",
        ] {
            assert!(USAGE.contains(flag), "{flag}");
        }
    }
}
