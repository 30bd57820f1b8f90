//! One behavioural suite for the state-store contract, run against the embedded
//! store and against a real `redis-server`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchyard::state::{
    Decision, MembershipChange, MemoryStore, Overlay, OverlayOp, Record, RedisStore, StateStore,
    StoreEvent, TokenRequest,
};
use switchyard_shared::{CircuitState, HealthStatus, ReplicaView};

fn change(url: &str, op: OverlayOp, weight: u32) -> MembershipChange {
    MembershipChange {
        key: switchyard_shared::validate::backend_url(url).unwrap().key(),
        url: url.into(),
        op,
        weight,
    }
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>,
    want: impl Fn(&StoreEvent) -> bool,
) -> StoreEvent {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ev = rx.recv().await.unwrap();
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event within 5 s")
}

async fn suite(store: Arc<dyn StateStore>) {
    wait_until(Duration::from_secs(10), "store connected", || {
        let s = store.clone();
        async move { s.is_connected() }
    })
    .await;
    let mut events = store.subscribe();

    // --- membership: ordered by the store, full overlay returned
    let o = store
        .change_membership(change("http://a:80", OverlayOp::Add, 2))
        .await
        .unwrap();
    assert_eq!(o.version, 1);
    assert_eq!(o.entries["http://a:80"].weight, 2);
    assert_eq!(o.entries["http://a:80"].seq, 1);
    next_event(&mut events, |e| matches!(e, StoreEvent::Membership(1))).await;
    store
        .change_membership(change("http://b", OverlayOp::Add, 1))
        .await
        .unwrap();
    let o = store
        .change_membership(change("http://a:80", OverlayOp::Remove, 2))
        .await
        .unwrap();
    assert_eq!(o.version, 3);
    assert_eq!(o.entries.len(), 2);
    assert_eq!(o.entries["http://a:80"].op, OverlayOp::Remove);
    assert_eq!(o.entries["http://b:80"].url, "http://b");
    assert_eq!(store.membership().await.unwrap(), o);

    // --- reseed: an older overlay is ignored, a newer one replaces
    let older = Overlay {
        version: 2,
        ..Default::default()
    };
    assert_eq!(store.reseed_membership(older).await.unwrap(), o);
    let mut newer = o.clone();
    newer.version = 10;
    newer.entries.remove("http://b:80");
    let after = store.reseed_membership(newer.clone()).await.unwrap();
    assert_eq!(after, newer);
    // and numbering continues after it
    assert_eq!(
        store
            .change_membership(change("http://c", OverlayOp::Add, 1))
            .await
            .unwrap()
            .version,
        11
    );

    // --- decisions: stored per (kind, backend), broadcast, remaining time counts down
    let rec = Record {
        key: "http://a:80".into(),
        by: "r1".into(),
        version: 0,
        decision: Decision::Circuit {
            state: CircuitState::Open,
            remaining_ms: 60_000,
            reason: "5 consecutive failures".into(),
        },
    };
    store.publish(rec.clone()).await.unwrap();
    let ev = next_event(&mut events, |e| matches!(e, StoreEvent::Record(_))).await;
    let StoreEvent::Record(got) = ev else {
        unreachable!()
    };
    assert_eq!(got.key, "http://a:80");
    assert_eq!(got.by, "r1");
    assert!(got.version > 0);
    store
        .publish(Record {
            decision: Decision::Health {
                status: HealthStatus::Unhealthy,
                reason: Some("GET /health answered 503".into()),
            },
            ..rec.clone()
        })
        .await
        .unwrap();
    let records = store.records().await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let circuit = records
        .iter()
        .find(|r| r.decision.kind() == "circuit")
        .unwrap();
    match &circuit.decision {
        Decision::Circuit {
            state,
            remaining_ms,
            reason,
        } => {
            assert_eq!(*state, CircuitState::Open);
            assert!(
                *remaining_ms <= 60_000 && *remaining_ms > 50_000,
                "{remaining_ms}"
            );
            assert_eq!(reason, "5 consecutive failures");
        }
        d => panic!("{d:?}"),
    }
    // a later decision of the same kind replaces it
    store
        .publish(Record {
            decision: Decision::Circuit {
                state: CircuitState::Closed,
                remaining_ms: 0,
                reason: "probe succeeded".into(),
            },
            ..rec.clone()
        })
        .await
        .unwrap();
    let records = store.records().await.unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().any(|r| matches!(
        r.decision,
        Decision::Circuit {
            state: CircuitState::Closed,
            ..
        }
    )));

    // --- leases: one holder at a time, renewable, released, expiring
    let ttl = Duration::from_millis(300);
    assert!(
        store
            .try_lease("probe:x".into(), "r1".into(), ttl)
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_lease("probe:x".into(), "r2".into(), ttl)
            .await
            .unwrap()
    );
    assert!(
        store
            .try_lease("probe:x".into(), "r1".into(), ttl)
            .await
            .unwrap(),
        "renewal"
    );
    store
        .release_lease("probe:x".into(), "r2".into())
        .await
        .unwrap();
    assert!(
        !store
            .try_lease("probe:x".into(), "r2".into(), ttl)
            .await
            .unwrap(),
        "only the holder releases"
    );
    store
        .release_lease("probe:x".into(), "r1".into())
        .await
        .unwrap();
    assert!(
        store
            .try_lease("probe:x".into(), "r2".into(), ttl)
            .await
            .unwrap()
    );
    wait_until(Duration::from_secs(3), "lease expiry", || {
        let s = store.clone();
        async move {
            s.try_lease("probe:x".into(), "r3".into(), ttl)
                .await
                .unwrap()
        }
    })
    .await;

    // --- token buckets: burst first, then nothing until refill; debt is charged
    let req = |want, debt| TokenRequest {
        bucket: "b1".into(),
        rate: 10.0,
        burst: 5.0,
        want,
        debt,
    };
    let g = store.take_tokens(vec![req(8, 0)]).await.unwrap();
    assert_eq!(g[0].granted, 5);
    assert!(g[0].remaining < 1.0);
    let g = store.take_tokens(vec![req(1, 2)]).await.unwrap();
    assert_eq!(g[0].granted, 0);
    assert!(
        g[0].remaining < -1.0,
        "debt makes it negative: {}",
        g[0].remaining
    );
    // buckets are independent, and one call serves several
    let mut other = req(3, 0);
    other.bucket = "b2".into();
    let g = store.take_tokens(vec![req(1, 0), other]).await.unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(g[1].granted, 3);
    // the store's clock refills: within a few hundred ms tokens come back
    wait_until(Duration::from_secs(3), "refill", || {
        let s = store.clone();
        async move { s.take_tokens(vec![req(1, 0)]).await.unwrap()[0].granted == 1 }
    })
    .await;

    // --- replica registry with TTL
    let me = ReplicaView {
        id: "replica-a".into(),
        version: "1".into(),
        ..Default::default()
    };
    store
        .heartbeat(me.clone(), Duration::from_millis(400))
        .await
        .unwrap();
    store
        .heartbeat(
            ReplicaView {
                id: "replica-b".into(),
                ..Default::default()
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ids: Vec<String> = store
        .replicas()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["replica-a", "replica-b"]);
    wait_until(Duration::from_secs(3), "replica-a to expire", || {
        let s = store.clone();
        async move {
            s.replicas()
                .await
                .unwrap()
                .iter()
                .all(|r| r.id != "replica-a")
        }
    })
    .await;
    assert!(store.status().connected);
}

#[tokio::test]
async fn memory_store_meets_the_contract() {
    suite(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_store_meets_the_contract() {
    let redis = RedisServer::start();
    let store =
        RedisStore::new(&redis.url(), "suite", Duration::from_millis(500), "local").unwrap();
    let tasks = store.spawn();
    suite(store.clone()).await;
    // Keys stay under the cluster's hash-tagged prefix.
    let keys = redis.cli(&["--scan"]);
    assert!(!keys.is_empty());
    for k in keys.lines() {
        assert!(k.starts_with("switchyard:{suite}:"), "{k}");
    }
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn redis_store_reports_outages_and_refuses_writes() {
    let mut redis = RedisServer::start();
    let store =
        RedisStore::new(&redis.url(), "outage", Duration::from_millis(300), "local").unwrap();
    let tasks = store.spawn();
    let mut events = store.subscribe();
    wait_until(Duration::from_secs(10), "connected", || {
        let s = store.clone();
        async move { s.is_connected() }
    })
    .await;
    redis.kill9();
    next_event(&mut events, |e| matches!(e, StoreEvent::Disconnected(_))).await;
    assert!(!store.status().connected);
    let err = store
        .change_membership(change("http://a", OverlayOp::Add, 1))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("state store unavailable"),
        "{err}"
    );
    redis.restart();
    next_event(&mut events, |e| matches!(e, StoreEvent::Reconnected)).await;
    assert!(store.status().connected);
    assert!(store.status().errors > 0);
    // Empty after the restart: nothing was written while it was down.
    assert_eq!(store.membership().await.unwrap().version, 0);
    for t in tasks {
        t.abort();
    }
}
