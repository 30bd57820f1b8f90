//! `GET /admin/events`: the dashboard's live feed as server-sent events.
//!
//! - `event: snapshot`, `data: <DashboardSnapshot JSON>` — right away, then every second;
//! - `event: event`, `data: <Event JSON>` — each event as it happens.
//!
//! Browsers' `EventSource` cannot send headers, so when an admin token is set this
//! endpoint also accepts it as `?access_token=...`.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::AdminState;

/// How often a full snapshot is pushed.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

pub async fn events(
    State(s): State<AdminState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.app.events.subscribe();
    let mut tick = tokio::time::interval(SNAPSHOT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold((s, rx, tick), |(s, mut rx, mut tick)| async move {
        loop {
            if s.app.shutting_down.load(Relaxed) {
                return None;
            }
            let item = tokio::select! {
                _ = tick.tick() => {
                    let snap = super::views::dashboard_snapshot(&s);
                    SseEvent::default().event("snapshot").json_data(&snap).ok()
                }
                ev = rx.recv() => match ev {
                    Ok(ev) => SseEvent::default().event("event").json_data(&ev).ok(),
                    // Missed some: the next snapshot carries the recent ones anyway.
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return None,
                },
            };
            if let Some(item) = item {
                return Some((Ok(item), (s, rx, tick)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
