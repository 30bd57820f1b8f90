//! Entry point: mounts the dashboard in the browser.

fn main() {
    #[cfg(target_arch = "wasm32")]
    dashboard_app::ui::mount();
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("dashboard-app runs in a browser: build it with scripts/build-dashboard.sh");
}
