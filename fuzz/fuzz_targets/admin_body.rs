//! Admin request bodies through the real router: any bytes to `/admin/add` and
//! `/admin/remove` get a 2xx or a 4xx with a JSON error, never a 5xx or a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    app: Arc<switchyard::app::App>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let app = rt.block_on(async {
            let config = switchyard::config::parse("backends:\n  - url: http://127.0.0.1:9\n", "f.yaml").unwrap();
            switchyard::app::App::new(
                config,
                Arc::new(switchyard::state::MemoryStore::default()),
                "fuzz".into(),
                switchyard::server::file_source("f.yaml"),
            )
        });
        World { rt, app }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    for path in ["/admin/add", "/admin/remove"] {
        let router = switchyard::admin::router(switchyard::admin::AdminState {
            app: w.app.clone(),
            token: None,
            public_read: false,
            dashboard_dir: "/nonexistent".into(),
            cors_origins: Vec::new(),
        });
        let req = axum::http::Request::post(path).body(Body::from(data.to_vec())).unwrap();
        let (status, body) = w.rt.block_on(async {
            let resp = router.oneshot(req).await.unwrap();
            let status = resp.status();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        });
        assert!(!status.is_server_error(), "{path}: {status}");
        if status.is_client_error() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(v.get("error").is_some());
        }
    }
});
