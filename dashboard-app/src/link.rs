//! The live connection's state machine: connect, watch for staleness, find out why a
//! stream failed (a token? the network?), and reconnect with capped, jittered
//! exponential backoff. Time comes in as milliseconds from the caller, so the logic is
//! tested natively without a browser or a clock.

/// No snapshot for longer than this and the page says its data is stale.
pub const STALE_AFTER_MS: f64 = 3_000.0;
/// A stream that is connected (or connecting) but silent this long is restarted: the
/// server pushes a snapshot every second, so something between us is stuck.
pub const SILENT_RESTART_MS: f64 = 10_000.0;

/// Exponential backoff: `base`, `2·base`, `4·base`, … capped at `max`, each delay
/// drawn from its upper half so that many tabs do not reconnect in lockstep.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    pub base_ms: f64,
    pub max_ms: f64,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(500.0, 10_000.0)
    }
}

impl Backoff {
    pub fn new(base_ms: f64, max_ms: f64) -> Self {
        Self {
            base_ms,
            max_ms,
            failures: 0,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records a failure and returns how long to wait; `jitter` is uniform in 0..1.
    pub fn fail(&mut self, jitter: f64) -> f64 {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let ceiling = (self.base_ms * 2f64.powi(exp as i32)).min(self.max_ms);
        ceiling * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Where the connection is.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Not started yet.
    Idle,
    /// A stream was opened at `since_ms`; no snapshot on it yet.
    Connecting { since_ms: f64 },
    /// Snapshots are arriving.
    Live,
    /// The stream failed; asking the server whether it wants a token.
    Checking,
    /// Waiting until `until_ms` to try again.
    Waiting { until_ms: f64 },
    /// The server refused us: `wrong` when a token was sent and refused (403), else
    /// none was sent (401). Nothing happens until the user gives a token.
    NeedsToken { wrong: bool },
}

/// What the browser side must do next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    /// Open a new stream (closing any old one first).
    Connect,
    /// Close the stream and ask `GET /admin/config` (with the token) what is wrong.
    Probe,
}

/// The answer to a [`Command::Probe`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Probe {
    /// 401: a token is needed.
    Unauthorized,
    /// 403: the token we sent is wrong.
    Forbidden,
    /// Anything else, including no answer: retry later.
    Retry,
}

/// The connection indicator's state, for text, colour and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// `live`, `stale`, `connecting`, `reconnecting` or `token`.
    pub state: &'static str,
    pub text: String,
    pub tone: crate::model::Tone,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    phase: Phase,
    backoff: Backoff,
    last_snapshot_ms: Option<f64>,
}

impl Default for Link {
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl Link {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            phase: Phase::Idle,
            backoff,
            last_snapshot_ms: None,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn last_snapshot_ms(&self) -> Option<f64> {
        self.last_snapshot_ms
    }

    /// Start (or restart after a new token): connect now.
    pub fn start(&mut self, now_ms: f64) -> Command {
        self.backoff.reset();
        self.phase = Phase::Connecting { since_ms: now_ms };
        Command::Connect
    }

    pub fn on_snapshot(&mut self, now_ms: f64) {
        self.last_snapshot_ms = Some(now_ms);
        self.backoff.reset();
        self.phase = Phase::Live;
    }

    /// The stream reported an error (it may be retrying by itself, but we take over so
    /// that a 401 is noticed and retries back off).
    pub fn on_error(&mut self) -> Option<Command> {
        match self.phase {
            Phase::Connecting { .. } | Phase::Live => {
                self.phase = Phase::Checking;
                Some(Command::Probe)
            }
            // Late errors from a stream we already gave up on.
            Phase::Idle | Phase::Checking | Phase::Waiting { .. } | Phase::NeedsToken { .. } => {
                None
            }
        }
    }

    /// The probe's answer. Returns the delay before the next attempt, if one is planned.
    pub fn on_probe(&mut self, now_ms: f64, probe: Probe, jitter: f64) -> Option<f64> {
        if self.phase != Phase::Checking {
            return None;
        }
        match probe {
            Probe::Unauthorized => {
                self.phase = Phase::NeedsToken { wrong: false };
                None
            }
            Probe::Forbidden => {
                self.phase = Phase::NeedsToken { wrong: true };
                None
            }
            Probe::Retry => {
                let delay = self.backoff.fail(jitter);
                self.phase = Phase::Waiting {
                    until_ms: now_ms + delay,
                };
                Some(delay)
            }
        }
    }

    /// Called periodically (a few times a second): time to reconnect, or a silent
    /// stream to restart?
    pub fn on_tick(&mut self, now_ms: f64) -> Option<Command> {
        match self.phase {
            Phase::Waiting { until_ms } if now_ms >= until_ms => {
                self.phase = Phase::Connecting { since_ms: now_ms };
                Some(Command::Connect)
            }
            Phase::Connecting { since_ms } if now_ms - since_ms > SILENT_RESTART_MS => {
                self.phase = Phase::Checking;
                Some(Command::Probe)
            }
            Phase::Live
                if self
                    .last_snapshot_ms
                    .is_some_and(|t| now_ms - t > SILENT_RESTART_MS) =>
            {
                self.phase = Phase::Checking;
                Some(Command::Probe)
            }
            _ => None,
        }
    }

    /// No snapshot for more than [`STALE_AFTER_MS`] (or none yet, after connecting
    /// for that long).
    pub fn is_stale(&self, now_ms: f64) -> bool {
        match (self.last_snapshot_ms, &self.phase) {
            (Some(t), _) => now_ms - t > STALE_AFTER_MS,
            (None, Phase::Connecting { since_ms }) => now_ms - since_ms > STALE_AFTER_MS,
            (None, Phase::Idle) => false,
            (None, _) => true,
        }
    }

    pub fn status(&self, now_ms: f64) -> Status {
        use crate::model::Tone;
        let silent = self
            .last_snapshot_ms
            .map(|t| crate::format::duration_s(((now_ms - t).max(0.0) / 1000.0) as u64));
        let stale_note = match (&silent, self.is_stale(now_ms)) {
            (Some(s), true) => format!(" — data is stale, no update for {s}"),
            (None, true) => " — no data yet".to_string(),
            _ => String::new(),
        };
        match &self.phase {
            Phase::NeedsToken { wrong: false } => Status {
                state: "token",
                text: "admin token needed".into(),
                tone: Tone::Bad,
            },
            Phase::NeedsToken { wrong: true } => Status {
                state: "token",
                text: "admin token refused".into(),
                tone: Tone::Bad,
            },
            Phase::Live if !self.is_stale(now_ms) => Status {
                state: "live",
                text: "live".into(),
                tone: Tone::Good,
            },
            Phase::Live => Status {
                state: "stale",
                text: format!(
                    "stale — no update for {}",
                    silent.as_deref().unwrap_or(crate::format::NONE)
                ),
                tone: Tone::Warn,
            },
            Phase::Idle | Phase::Connecting { .. } => Status {
                state: if self.is_stale(now_ms) {
                    "stale"
                } else {
                    "connecting"
                },
                text: format!("connecting…{stale_note}"),
                tone: if self.is_stale(now_ms) {
                    Tone::Warn
                } else {
                    Tone::Neutral
                },
            },
            Phase::Checking => Status {
                state: "reconnecting",
                text: format!("connection lost, checking…{stale_note}"),
                tone: Tone::Bad,
            },
            Phase::Waiting { until_ms } => {
                let secs = ((until_ms - now_ms).max(0.0) / 1000.0).ceil() as u64;
                Status {
                    state: "reconnecting",
                    text: format!(
                        "reconnecting in {secs} s (attempt {}){stale_note}",
                        self.backoff.failures() + 1
                    ),
                    tone: Tone::Bad,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
