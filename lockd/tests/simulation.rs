//! Deterministic simulation: the real server and client cores, many clients,
//! random lock traffic, random message delays, dropped connections, long
//! disconnects and server restarts under a seeded scheduler. After every step
//! no two clients (nor the server's own books) hold incompatible modes on one
//! range, and at the end every request was granted. A failure prints its seed;
//! `LOCKD_SIM_SEED=<seed>` replays just that one, `LOCKD_SIM_SEEDS=<n>` runs n.

use std::collections::{BTreeMap, BTreeSet};

use lockd::client::{ClientConfig, ClientCore, ClientOutput, InvalidateToken};
use lockd::server::{ServerConfig, ServerCore, ServerInput, ServerOutput};
use lockd::wire::{Frame, LockMsg, LockRange, Mode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CLUSTER_ID: u64 = 0x5eed;
const CLIENTS: usize = 6;
const LOCK_RANGES: u64 = 5;
const TICK_US: u64 = 10_000;
const DELAY_MAX_US: u64 = 20_000;
/// Requests and faults happen until then; afterwards the system must settle.
const ACTIVE_US: u64 = 3_000_000;
/// Settling must finish by then, or a request was starved.
const SETTLE_DEADLINE_US: u64 = ACTIVE_US + 30_000_000;
const SEEDS_DEFAULT: u64 = 400;

fn server_config() -> ServerConfig {
    ServerConfig {
        cluster_id: CLUSTER_ID,
        grace_ms: 1000,
        heartbeat_interval_ms: 50,
        heartbeat_timeout_ms: 200,
        recovery_ms: 1000,
    }
}

fn client_config(id: usize) -> ClientConfig {
    // lease <= grace - heartbeat timeout - largest delay - one tick
    ClientConfig {
        cluster_id: CLUSTER_ID,
        client_id: 100 + id as u64,
        heartbeat_interval_ms: 50,
        heartbeat_timeout_ms: 200,
        lease_ms: 700,
    }
}

fn range(index: u64) -> LockRange {
    LockRange::new(1, index * 100, index * 100 + 99)
}

#[derive(Debug)]
enum Event {
    ToServer(u64, Frame),
    ToClient(u64, Frame),
    ServerNotice(u64),
    ClientNotice(u64),
    Reconnect(usize),
    Act(usize),
    InvalidateDone(usize, InvalidateToken, LockMsg),
    Tick,
    DropConn,
    ServerRestart,
}

struct Conn {
    client: usize,
    alive: bool,
    to_server_at_us: u64,
    to_client_at_us: u64,
}

struct SimClient {
    core: ClientCore,
    conn: Option<u64>,
    /// Ranges with a request outstanding, and when it was made.
    pending: BTreeMap<LockRange, u64>,
}

struct Sim {
    seed: u64,
    rng: SmallRng,
    now_us: u64,
    events: BTreeMap<(u64, u64), Event>,
    event_count: u64,
    server: ServerCore,
    epoch: u64,
    clients: Vec<SimClient>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    grants: u64,
    invalidations: u64,
    lost: u64,
    restarts: u64,
    /// LOCKD_SIM_TRACE=1 prints every event (with a single seed).
    trace: bool,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut sim = Sim {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            now_us: 0,
            events: BTreeMap::new(),
            event_count: 0,
            server: ServerCore::new(server_config(), 1, 0),
            epoch: 1,
            clients: (0..CLIENTS)
                .map(|i| SimClient {
                    core: ClientCore::new(client_config(i)),
                    conn: None,
                    pending: BTreeMap::new(),
                })
                .collect(),
            conns: BTreeMap::new(),
            next_conn: 1,
            grants: 0,
            invalidations: 0,
            lost: 0,
            restarts: 0,
            trace: std::env::var("LOCKD_SIM_TRACE").is_ok(),
        };
        for client in 0..CLIENTS {
            let at = sim.rng.gen_range(0..5_000);
            sim.schedule(at, Event::Reconnect(client));
            let at = sim.rng.gen_range(0..20_000);
            sim.schedule(at, Event::Act(client));
        }
        sim.schedule(TICK_US, Event::Tick);
        let at = sim.rng.gen_range(0..400_000);
        sim.schedule(at, Event::DropConn);
        let restarts = sim.rng.gen_range(0..3u64);
        for _ in 0..restarts {
            let at = sim.rng.gen_range(0..ACTIVE_US);
            sim.schedule(at, Event::ServerRestart);
        }
        sim
    }

    fn schedule(&mut self, after_us: u64, event: Event) {
        self.event_count += 1;
        self.events
            .insert((self.now_us + after_us, self.event_count), event);
    }

    fn schedule_at(&mut self, at_us: u64, event: Event) {
        self.event_count += 1;
        self.events.insert((at_us, self.event_count), event);
    }

    fn fail(&self, what: &str) -> ! {
        panic!("simulation seed {} failed at {} us: {what}\nreplay: LOCKD_SIM_SEED={} cargo test -p lockd --test simulation", self.seed, self.now_us, self.seed);
    }

    fn run(&mut self) {
        while let Some(((at_us, _), event)) = self.events.pop_first() {
            self.now_us = at_us;
            if self.trace {
                eprintln!("{at_us:>9} {event:?}");
            }
            self.step(event);
            self.check_invariant();
            let outstanding = self.clients.iter().any(|c| !c.pending.is_empty());
            if self.now_us >= ACTIVE_US && !outstanding {
                return;
            }
            if self.now_us >= SETTLE_DEADLINE_US {
                let starved: Vec<_> = self
                    .clients
                    .iter()
                    .enumerate()
                    .flat_map(|(i, c)| c.pending.iter().map(move |(r, t)| (i, *r, *t)))
                    .collect();
                self.fail(&format!(
                    "requests never granted (client, range, since): {starved:?}"
                ));
            }
        }
        self.fail("ran out of events");
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::ToServer(conn, frame) => {
                if self.conns.get(&conn).is_some_and(|c| c.alive) {
                    self.server_input(ServerInput::Frame(conn, frame));
                    self.server_input(ServerInput::Flush);
                }
            }
            Event::ToClient(conn, frame) => {
                let Some(client) = self.conns.get(&conn).filter(|c| c.alive).map(|c| c.client)
                else {
                    return;
                };
                let mut out = Vec::new();
                self.clients[client]
                    .core
                    .receive(self.now_us, frame, &mut out);
                self.clients[client].core.flush(self.now_us, &mut out);
                self.client_outputs(client, out);
            }
            Event::ServerNotice(conn) => self.server_input(ServerInput::Disconnected(conn)),
            Event::ClientNotice(conn) => {
                let client = self.conns[&conn].client;
                if self.clients[client].conn == Some(conn) {
                    self.clients[client].conn = None;
                    self.clients[client].core.disconnected();
                    self.schedule_reconnect(client);
                }
            }
            Event::Reconnect(client) => self.reconnect(client),
            Event::Act(client) => self.act(client),
            Event::InvalidateDone(client, token, msg) => {
                let mut out = Vec::new();
                self.clients[client]
                    .core
                    .invalidate_done(self.now_us, token, msg, &mut out);
                self.client_outputs(client, out);
            }
            Event::Tick => {
                self.server_input(ServerInput::Tick);
                for client in 0..CLIENTS {
                    let mut out = Vec::new();
                    self.clients[client].core.tick(self.now_us, &mut out);
                    self.client_outputs(client, out);
                }
                self.schedule(TICK_US, Event::Tick);
            }
            Event::DropConn => {
                let alive: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.alive)
                    .map(|(&id, _)| id)
                    .collect();
                if !alive.is_empty() {
                    let conn = alive[self.rng.gen_range(0..alive.len())];
                    self.kill_conn(conn, true, true);
                }
                if self.now_us < ACTIVE_US {
                    let at = self.rng.gen_range(20_000..400_000);
                    self.schedule(at, Event::DropConn);
                }
            }
            Event::ServerRestart => {
                self.restarts += 1;
                self.epoch += 1;
                self.server = ServerCore::new(server_config(), self.epoch, self.now_us);
                let alive: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.alive)
                    .map(|(&id, _)| id)
                    .collect();
                for conn in alive {
                    self.kill_conn(conn, false, true);
                }
            }
        }
    }

    /// A connection dies: in-flight frames are lost; each end notices later.
    fn kill_conn(&mut self, conn: u64, notify_server: bool, notify_client: bool) {
        let Some(state) = self.conns.get_mut(&conn).filter(|c| c.alive) else {
            return;
        };
        state.alive = false;
        if notify_server {
            let at = self.rng.gen_range(0..DELAY_MAX_US * 2);
            self.schedule(at, Event::ServerNotice(conn));
        }
        if notify_client {
            let at = self.rng.gen_range(0..DELAY_MAX_US * 2);
            self.schedule(at, Event::ClientNotice(conn));
        }
    }

    fn schedule_reconnect(&mut self, client: usize) {
        // Mostly quick, sometimes longer than the grace period.
        let at = if self.rng.gen_ratio(1, 10) {
            self.rng.gen_range(500_000..2_000_000)
        } else {
            self.rng.gen_range(5_000..50_000)
        };
        self.schedule(at, Event::Reconnect(client));
    }

    fn reconnect(&mut self, client: usize) {
        if self.clients[client].conn.is_some() {
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                client,
                alive: true,
                to_server_at_us: 0,
                to_client_at_us: 0,
            },
        );
        self.clients[client].conn = Some(conn);
        self.server_input(ServerInput::Connected(conn));
        let mut out = Vec::new();
        self.clients[client].core.connected(self.now_us, &mut out);
        self.client_outputs(client, out);
    }

    fn act(&mut self, client: usize) {
        if self.now_us >= ACTIVE_US {
            return;
        }
        let next = self.rng.gen_range(1_000..30_000);
        self.schedule(next, Event::Act(client));
        let range = range(self.rng.gen_range(0..LOCK_RANGES));
        if self.clients[client].pending.contains_key(&range) {
            return;
        }
        let held = self.clients[client].core.held(&range);
        let modes = [Mode::Read, Mode::WriteOnly, Mode::Write];
        let mode = if held != Mode::Null && self.rng.gen_ratio(1, 2) {
            Mode::Null
        } else {
            modes[self.rng.gen_range(0..3)]
        };
        if mode == held {
            return;
        }
        let mut out = Vec::new();
        if let Err(error) =
            self.clients[client]
                .core
                .request(self.now_us, LockMsg { range, mode }, &mut out)
        {
            self.fail(&format!("request refused locally: {error}"));
        }
        self.clients[client].pending.insert(range, self.now_us);
        self.client_outputs(client, out);
    }

    fn server_input(&mut self, input: ServerInput) {
        let mut out = Vec::new();
        self.server.handle(self.now_us, input, &mut out);
        for output in out {
            match output {
                ServerOutput::Send(conn, frame) => {
                    let delay = self.rng.gen_range(0..DELAY_MAX_US);
                    let Some(state) = self.conns.get_mut(&conn).filter(|c| c.alive) else {
                        continue;
                    };
                    state.to_client_at_us = state.to_client_at_us.max(self.now_us + delay);
                    let at = state.to_client_at_us;
                    self.schedule_at(at, Event::ToClient(conn, frame));
                }
                ServerOutput::Close(conn, _reason) => self.kill_conn(conn, false, true),
            }
        }
    }

    fn client_outputs(&mut self, client: usize, out: Vec<ClientOutput>) {
        for output in out {
            match output {
                ClientOutput::Send(frame) => {
                    let delay = self.rng.gen_range(0..DELAY_MAX_US);
                    let Some(conn) = self.clients[client].conn else {
                        continue;
                    };
                    let Some(state) = self.conns.get_mut(&conn).filter(|c| c.alive) else {
                        continue;
                    };
                    state.to_server_at_us = state.to_server_at_us.max(self.now_us + delay);
                    let at = state.to_server_at_us;
                    self.schedule_at(at, Event::ToServer(conn, frame));
                }
                ClientOutput::Close(_reason) => {
                    if let Some(conn) = self.clients[client].conn.take() {
                        self.kill_conn(conn, true, false);
                        self.schedule_reconnect(client);
                    }
                }
                ClientOutput::Ready { .. } => {}
                ClientOutput::Refused(reason) => {
                    self.fail(&format!("client {client} refused: {reason}"))
                }
                ClientOutput::Granted(msg) => {
                    self.grants += 1;
                    if self.clients[client].pending.remove(&msg.range).is_none() {
                        self.fail(&format!(
                            "client {client} granted {msg:?} it did not ask for"
                        ));
                    }
                }
                ClientOutput::Failed(msg, error) => self.fail(&format!(
                    "client {client} request {msg:?} failed: {error:?}"
                )),
                ClientOutput::Invalidate(token, msg) => {
                    self.invalidations += 1;
                    // The holder's work (a commit) takes a while.
                    let at = self.rng.gen_range(0..5_000);
                    self.schedule(at, Event::InvalidateDone(client, token, msg));
                }
                ClientOutput::Lost(_) => self.lost += 1,
                ClientOutput::Stats(_) | ClientOutput::FarewellDone => {}
            }
        }
    }

    fn check_invariant(&self) {
        if let Err(error) = self.server.locks().check_invariant() {
            self.fail(&format!("server books: {error}"));
        }
        let mut by_range: BTreeMap<LockRange, Vec<(usize, Mode)>> = BTreeMap::new();
        for (index, client) in self.clients.iter().enumerate() {
            for (range, mode) in client.core.held_all() {
                by_range.entry(*range).or_default().push((index, *mode));
            }
        }
        for (range, holders) in by_range {
            for (i, &(a, mode_a)) in holders.iter().enumerate() {
                for &(b, mode_b) in &holders[i + 1..] {
                    if !mode_a.compatible(mode_b) {
                        self.fail(&format!("{range:?}: client {a} holds {mode_a:?} while client {b} holds {mode_b:?}"));
                    }
                }
            }
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("LOCKD_SIM_SEED") {
        return vec![seed.parse().expect("LOCKD_SIM_SEED is a u64")];
    }
    let count = std::env::var("LOCKD_SIM_SEEDS").map_or(SEEDS_DEFAULT, |n| {
        n.parse().expect("LOCKD_SIM_SEEDS is a u64")
    });
    (1..=count).collect()
}

#[test]
fn simulated_cluster_keeps_locks_compatible_and_grants_every_request() {
    let mut totals = (0u64, 0u64, 0u64, 0u64);
    let mut lock_sets = BTreeSet::new();
    for seed in seeds() {
        let mut sim = Sim::new(seed);
        sim.run();
        totals.0 += sim.grants;
        totals.1 += sim.invalidations;
        totals.2 += sim.lost;
        totals.3 += sim.restarts;
        lock_sets.insert(sim.grants > 0);
    }
    eprintln!(
        "simulation: {} grants, {} invalidations, {} locks lost to leases, {} server restarts",
        totals.0, totals.1, totals.2, totals.3
    );
    // The runs must have exercised the paths they claim to test.
    assert!(totals.0 > 0 && totals.1 > 0, "no contention was simulated");
    assert!(lock_sets.contains(&true));
}
