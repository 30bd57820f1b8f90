//! The few browser APIs the dashboard uses: the clock, `sessionStorage`, `fetch` and
//! `EventSource`. Thin wrappers; decisions live in the view model.

use std::cell::RefCell;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{EventSource, Headers, MessageEvent, Request, RequestInit, Response};

use crate::actions::{TOKEN_KEY, bearer};

/// Client wall-clock time, Unix milliseconds.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Uniform in 0..1, for backoff jitter.
pub fn random() -> f64 {
    js_sys::Math::random()
}

fn js_error(v: JsValue) -> String {
    v.as_string()
        .or_else(|| {
            v.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_else(|| format!("{v:?}"))
}

// === token ===

fn session_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

/// The admin token kept for this tab, if any.
pub fn load_token() -> Option<String> {
    session_storage()?
        .get_item(TOKEN_KEY)
        .ok()
        .flatten()
        .filter(|t| !t.is_empty())
}

/// Keeps the token for this tab only (`sessionStorage`), or forgets it.
pub fn store_token(token: Option<&str>) {
    let Some(s) = session_storage() else {
        return;
    };
    // Storage can refuse (quota, privacy mode); the token then lasts as long as the
    // page, which is still usable.
    let _ = match token {
        Some(t) => s.set_item(TOKEN_KEY, t),
        None => s.remove_item(TOKEN_KEY),
    };
}

// === fetch ===

/// Sends a request to the admin API. Returns the status and body, or status 0 and
/// the reason when there was no answer.
pub async fn request(
    method: &str,
    url: &str,
    body: Option<String>,
    token: Option<String>,
) -> (u16, String) {
    match try_request(method, url, body, token).await {
        Ok(r) => r,
        Err(e) => (0, e),
    }
}

async fn try_request(
    method: &str,
    url: &str,
    body: Option<String>,
    token: Option<String>,
) -> Result<(u16, String), String> {
    let init = RequestInit::new();
    init.set_method(method);
    let headers = Headers::new().map_err(js_error)?;
    if let Some(b) = &body {
        headers
            .set("content-type", "application/json")
            .map_err(js_error)?;
        init.set_body(&JsValue::from_str(b));
    }
    if let Some(auth) = bearer(token.as_deref()) {
        headers.set("authorization", &auth).map_err(js_error)?;
    }
    init.set_headers(&headers);
    let req = Request::new_with_str_and_init(url, &init).map_err(js_error)?;
    let window = web_sys::window().ok_or("no window")?;
    let resp: Response = JsFuture::from(window.fetch_with_request(&req))
        .await
        .map_err(js_error)?
        .dyn_into()
        .map_err(js_error)?;
    let text = JsFuture::from(resp.text().map_err(js_error)?)
        .await
        .map_err(js_error)?
        .as_string()
        .unwrap_or_default();
    Ok((resp.status(), text))
}

// === event stream ===

/// An open `EventSource` and the listeners it calls; dropping it closes the stream.
struct Stream {
    source: EventSource,
    _listeners: Vec<Closure<dyn FnMut(MessageEvent)>>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.source.close();
    }
}

thread_local! {
    /// The one live stream of the page (wasm is single-threaded).
    static STREAM: RefCell<Option<Stream>> = const { RefCell::new(None) };
}

/// Closes the stream, if one is open.
pub fn close_stream() {
    // Take it out first so that nothing runs while the cell is borrowed.
    let old = STREAM.with(|s| s.borrow_mut().take());
    drop(old);
}

/// Opens `url` as an event stream (closing any previous one). `on_message` gets the
/// SSE event name (`snapshot` or `event`) and its data; `on_error` is called when the
/// stream fails or drops.
pub fn open_stream(
    url: &str,
    on_message: impl Fn(&str, String) + Clone + 'static,
    on_error: impl Fn() + 'static,
) -> Result<(), String> {
    close_stream();
    let source = EventSource::new(url).map_err(js_error)?;
    let mut listeners = Vec::new();
    for name in ["snapshot", "event"] {
        let on_message = on_message.clone();
        let cb = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            if let Some(data) = e.data().as_string() {
                on_message(name, data);
            }
        });
        source
            .add_event_listener_with_callback(name, cb.as_ref().unchecked_ref())
            .map_err(js_error)?;
        listeners.push(cb);
    }
    let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_e: web_sys::Event| on_error());
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let stream = Stream {
        source,
        _listeners: listeners,
        _on_error: on_error,
    };
    let old = STREAM.with(|s| s.borrow_mut().replace(stream));
    drop(old);
    Ok(())
}
