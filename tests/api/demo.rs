//! `emulator/demo` as a new user meets it: a taken port fails at once with the way out, and
//! any stopping signal leaves nothing of the demo listening.

use crate::helpers::free_port;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/emulator/demo");

fn demo(port: u16, emulator_port: u16, log: &PathBuf) -> Command {
    let mut cmd = Command::new(DEMO);
    // A demo started from a terminal gets SIGHUP's default disposition. A test run under
    // `nohup` (or anything else that ignores SIGHUP) would hand the demo an ignored SIGHUP,
    // which a shell can neither trap nor reset, and the terminal-close test would measure
    // that instead of the demo.
    // SAFETY: `signal` is async-signal-safe, the only call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.env("PORT", port.to_string())
        .env("DEMO_EMULATOR_PORT", emulator_port.to_string())
        // The binary cargo built for this test run: no nested `cargo build` on a locked target.
        .env("FIRESTORE_ONCE_BIN", env!("CARGO_BIN_EXE_firestore-once"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    cmd
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("demo-{name}-{}.log", uuid::Uuid::new_v4().simple()))
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn output(log: &PathBuf) -> String {
    let out = std::fs::read_to_string(log).unwrap_or_default();
    let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
    format!("{out}{err}")
}

#[test]
fn demo_with_its_port_taken_fails_at_once_naming_the_port_and_the_way_out() {
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let log = log_path("taken");
    let started = Instant::now();
    let status = demo(port, free_port(), &log).status().unwrap();
    let took = started.elapsed();
    let text = output(&log);
    assert!(
        !status.success(),
        "the demo started on a taken port:\n{text}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}:\n{text}");
    assert!(
        text.contains(&format!("port {port} is already in use")),
        "{text}"
    );
    assert!(text.contains("PORT=8090 emulator/demo"), "{text}");
    assert!(
        !text.contains("Firestore emulator on"),
        "started an emulator:\n{text}"
    );

    // The emulator's port is checked the same way, before anything starts.
    let emulator_taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let eport = emulator_taken.local_addr().unwrap().port();
    let status = demo(free_port(), eport, &log).status().unwrap();
    let text = output(&log);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!("port {eport} (the demo's emulator")),
        "{text}"
    );
}

/// The demo's process; stopped on drop if a check failed first.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").arg(self.0.id().to_string()).status();
            let _ = self.0.wait();
        }
    }
}

/// Start the demo, wait until it serves, send `signal` to its PID only, and check that the
/// service and the emulator both stop listening.
fn demo_stops_everything_on(signal: &str) {
    let (port, eport) = (free_port(), free_port());
    let log = log_path(signal);
    let mut d = Demo(demo(port, eport, &log).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(listening(port) && listening(eport)) {
        assert!(
            Instant::now() < deadline,
            "demo not serving:\n{}",
            output(&log)
        );
        if let Some(s) = d.0.try_wait().unwrap() {
            panic!("demo exited ({s}) during start-up:\n{}", output(&log));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &d.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while listening(port) || listening(eport) {
        assert!(
            Instant::now() < deadline,
            "after SIG{signal} still listening: service {} emulator {}:\n{}",
            listening(port),
            listening(eport),
            output(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = d.0.wait().unwrap();
    assert!(!status.success(), "the demo exited 0 after SIG{signal}");
}

#[test]
fn demo_killed_by_pid_leaves_nothing_listening() {
    demo_stops_everything_on("TERM");
}

#[test]
fn demo_whose_terminal_closes_leaves_nothing_listening() {
    demo_stops_everything_on("HUP");
}
