//! The scenarios: load shapes, and the catalogue of rows a run measures.

/// The orders a scenario sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One line on one of 100 items, each client on its own items.
    Spread,
    /// One line on one of 100 items picked at random: concurrent orders collide.
    SpreadRandom,
    /// One line, always the same item.
    Hot,
    /// Orders already processed, sent again.
    Replay,
    /// Five lines on distinct items among 100 (each client on its own items when it has 5).
    Multi,
    /// Five lines on distinct items picked at random among 100: orders overlap.
    MultiRandom,
}

/// One row of the catalogue: a shape at a client count, with its settings.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    /// The ID `--only` selects (`1`, `3b`, `5r`…).
    pub(crate) id: &'static str,
    /// What the report calls it.
    pub(crate) title: &'static str,
    /// The orders sent.
    pub(crate) shape: Shape,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Extra environment for the service (e.g. the cache switched off).
    pub(crate) env: Vec<(&'static str, &'static str)>,
    /// Whether the baseline runs too (skipped for a service-only variant).
    pub(crate) baseline: bool,
    /// Service processes sharing the project; the clients are split evenly over them.
    pub(crate) instances: usize,
    /// Which round of the N-instance rows this is (`--rounds`), 0 otherwise.
    pub(crate) round: usize,
    /// Through the limits proxy at this many commits a second per document (family 6), the
    /// service's budget set to the same; `None`: straight to the emulator, on its terms (no
    /// budget: `ONCE_DOC_COMMITS_PER_SEC=off`).
    pub(crate) limits: Option<f64>,
}

impl Scenario {
    /// Whether `--old-bin` runs this scenario against the old build too: every
    /// single-instance one except the metrics-off twin (older builds may have no metrics).
    pub(crate) fn compares(&self) -> bool {
        self.instances == 1 && self.id != "1m"
    }
}

/// The scenarios to run; `long` adds N = 8 to the N-instance ones, `only_scale` and
/// `only_limits` keep those alone.
pub(crate) fn scenarios(
    smoke: bool,
    long: bool,
    only_scale: bool,
    only_limits: bool,
    rounds: usize,
) -> Vec<Scenario> {
    let s = |id, title, shape, clients| Scenario {
        id,
        title,
        shape,
        clients,
        env: Vec::new(),
        baseline: true,
        instances: 1,
        round: 0,
        limits: None,
    };
    let scale = |id, title, shape, instances| Scenario {
        baseline: false,
        instances,
        ..s(id, title, shape, 16)
    };
    let limited = |id, title, shape, rate, clients, instances| Scenario {
        baseline: false,
        instances,
        limits: Some(rate),
        ..s(id, title, shape, clients)
    };
    if smoke {
        return vec![
            s("1", "100 items, distinct orders", Shape::Spread, 8),
            scale("5", "one hot item, N instances", Shape::Hot, 2),
            limited("6", LIMITED_HOT, Shape::Hot, 10.0, 64, 1),
        ];
    }
    let mut n_instances = vec![1, 2, 4];
    if long {
        n_instances.push(8);
    }
    // Rounds run N = 1, 2, 4 then 4, 2, 1, …: the emulator's state drifts during a run (its
    // heap grows), and no N should always run in the same place.
    let mut scaled = Vec::new();
    for (id, title, shape) in [
        ("5", "one hot item, N instances", Shape::Hot),
        (
            "5r",
            "100 items at random, N instances",
            Shape::SpreadRandom,
        ),
    ] {
        for round in 0..rounds.max(1) {
            let mut order = n_instances.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for &n in &order {
                scaled.push(Scenario {
                    round,
                    ..scale(id, title, shape, n)
                });
            }
        }
    }
    if only_scale {
        return scaled;
    }
    // Through the limits proxy: 1 commit/s/doc (production) and 10, a flash sale's 1000
    // clients and 16 (the latency cost at low load), one instance and four.
    let mut limits = Vec::new();
    for (id, title, shape) in [
        ("6", LIMITED_HOT, Shape::Hot),
        ("6r", LIMITED_RANDOM, Shape::SpreadRandom),
    ] {
        for rate in [1.0, 10.0] {
            for clients in [1000, 16] {
                for instances in [1, 4] {
                    limits.push(limited(id, title, shape, rate, clients, instances));
                }
            }
        }
    }
    if only_limits {
        return limits;
    }
    let mut all = vec![
        s("1", "100 items, distinct orders", Shape::Spread, 1),
        s("1", "100 items, distinct orders", Shape::Spread, 8),
        // Two services side by side (`Env::overhead`), not one run after the other.
        Scenario {
            baseline: false,
            ..s(
                "1m",
                "as 1, metrics off and on side by side (overhead)",
                Shape::Spread,
                16,
            )
        },
        s("1", "100 items, distinct orders", Shape::Spread, 16),
        s("1", "100 items, distinct orders", Shape::Spread, 32),
        s("1r", "100 items picked at random", Shape::SpreadRandom, 32),
        s("2", "one hot item, distinct orders", Shape::Hot, 16),
        s("3", "replays (all duplicates)", Shape::Replay, 32),
        Scenario {
            env: vec![("ONCE_REPLAY_CACHE_BYTES", "0")],
            baseline: false,
            ..s("3b", "replays, replay cache off", Shape::Replay, 32)
        },
        s("4", "5-line orders over 100 items", Shape::Multi, 16),
        s(
            "4r",
            "5-line orders, items at random",
            Shape::MultiRandom,
            32,
        ),
    ];
    all.extend(scaled);
    all.extend(limits);
    all
}

/// Family 6's titles.
const LIMITED_HOT: &str = "one hot item through the limits proxy";
const LIMITED_RANDOM: &str = "100 items at random through the limits proxy";
