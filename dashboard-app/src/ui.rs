//! The page: Leptos components laying out the view model, and the controller that
//! feeds it from the event stream and sends the admin changes.
//!
//! Elements tests rely on carry `data-testid` (and `data-url` for per-backend ones).

use leptos::prelude::*;
use leptos::task::spawn_local;
use switchyard_shared::{DashboardSnapshot, Event};

use crate::actions::{self, Action, Outcome};
use crate::browser;
use crate::chart::{self, Chart};
use crate::link::{Command, Link, Phase, Probe};
use crate::model::{BackendRow, Badge, Dashboard, GoneRow, Tone};

/// How often the clock (staleness, reconnect timers) is checked.
const TICK_MS: u64 = 250;

/// All the page's state; signals are `Copy`, so handlers capture it by value.
#[derive(Clone, Copy)]
struct Ctx {
    dash: RwSignal<Dashboard>,
    link: RwSignal<Link>,
    /// Client clock, updated every tick.
    now: RwSignal<f64>,
    token: RwSignal<Option<String>>,
    /// `Some(reason)` while the token dialog is open.
    token_prompt: RwSignal<Option<String>>,
    /// A change waiting for confirmation.
    pending: RwSignal<Option<Action>>,
    /// The answer to the last change.
    result: RwSignal<Option<Outcome>>,
    busy: RwSignal<bool>,
    add_url: RwSignal<String>,
    add_weight: RwSignal<String>,
    add_error: RwSignal<Option<String>>,
}

// === impl Ctx: the controller ===

impl Ctx {
    fn new() -> Self {
        Self {
            dash: RwSignal::new(Dashboard::default()),
            link: RwSignal::new(Link::default()),
            now: RwSignal::new(browser::now_ms()),
            token: RwSignal::new(browser::load_token()),
            token_prompt: RwSignal::new(None),
            pending: RwSignal::new(None),
            result: RwSignal::new(None),
            busy: RwSignal::new(false),
            add_url: RwSignal::new(String::new()),
            add_weight: RwSignal::new("1".to_string()),
            add_error: RwSignal::new(None),
        }
    }

    fn start(self) {
        let now = browser::now_ms();
        if let Some(cmd) = self.link.try_update(|l| l.start(now)) {
            self.run(cmd);
        }
        set_interval(
            move || self.tick(),
            std::time::Duration::from_millis(TICK_MS),
        );
    }

    fn run(self, cmd: Command) {
        match cmd {
            Command::Connect => self.connect(),
            Command::Probe => self.probe(),
        }
    }

    fn connect(self) {
        let url = actions::events_url(self.token.get_untracked().as_deref());
        let opened = browser::open_stream(
            &url,
            move |name, data| self.on_message(name, &data),
            move || self.on_stream_error(),
        );
        if opened.is_err() {
            self.on_stream_error();
        }
    }

    fn on_message(self, name: &str, data: &str) {
        match name {
            "snapshot" => {
                // A snapshot we cannot read (a newer, incompatible proxy) is not
                // proof of life: the page then turns stale, which is the truth.
                if let Ok(snap) = serde_json::from_str::<DashboardSnapshot>(data) {
                    self.dash.update(|d| d.apply_snapshot(snap));
                    let now = browser::now_ms();
                    self.link.update(|l| l.on_snapshot(now));
                }
            }
            "event" => {
                if let Ok(ev) = serde_json::from_str::<Event>(data) {
                    self.dash.update(|d| d.apply_event(ev));
                }
            }
            _ => {}
        }
    }

    fn on_stream_error(self) {
        if let Some(Some(cmd)) = self.link.try_update(|l| l.on_error()) {
            self.run(cmd);
        }
    }

    /// The stream failed: close it and ask a plain endpoint (same auth rules) why.
    fn probe(self) {
        browser::close_stream();
        let token = self.token.get_untracked();
        spawn_local(async move {
            let (status, _) =
                browser::request("GET", &actions::probe_url(), None, token.clone()).await;
            let probe = match status {
                401 => Probe::Unauthorized,
                403 => Probe::Forbidden,
                _ => Probe::Retry,
            };
            let now = browser::now_ms();
            self.link
                .update(|l| _ = l.on_probe(now, probe, browser::random()));
            match self.link.with_untracked(|l| l.phase().clone()) {
                Phase::NeedsToken { wrong: false } => self.token_prompt.set(Some(
                    "This proxy needs its admin token to show the dashboard.".into(),
                )),
                Phase::NeedsToken { wrong: true } => self.token_prompt.set(Some(
                    "The proxy refused this token. Check it and try again.".into(),
                )),
                _ => {}
            }
        });
    }

    fn tick(self) {
        let now = browser::now_ms();
        self.now.set(now);
        if let Some(Some(cmd)) = self.link.try_update(|l| l.on_tick(now)) {
            self.run(cmd);
        }
    }

    /// Uses (or forgets) a token and reconnects with it.
    fn set_token(self, token: Option<String>) {
        let token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        browser::store_token(token.as_deref());
        self.token.set(token);
        self.token_prompt.set(None);
        let now = browser::now_ms();
        if let Some(cmd) = self.link.try_update(|l| l.start(now)) {
            self.run(cmd);
        }
    }

    fn submit_add(self) {
        let url = self.add_url.get_untracked();
        let weight = self.add_weight.get_untracked();
        match actions::validate_add(&url, &weight) {
            Ok(action) => {
                self.add_error.set(None);
                self.pending.set(Some(action));
            }
            Err(e) => self.add_error.set(Some(e)),
        }
    }

    /// Sends the confirmed change and shows the server's answer.
    fn confirm(self) {
        let Some(action) = self.pending.get_untracked() else {
            return;
        };
        self.pending.set(None);
        self.busy.set(true);
        self.result.set(None);
        let token = self.token.get_untracked();
        spawn_local(async move {
            let (status, body) =
                browser::request("POST", &action.path(), Some(action.body()), token).await;
            let out = actions::outcome(status, &body);
            if out.auth {
                self.token_prompt.set(Some(format!(
                    "The proxy refused the change ({}). Enter the admin token, then try again.",
                    if status == 401 {
                        "no token"
                    } else {
                        "wrong token"
                    }
                )));
            }
            if out.ok && matches!(action, Action::Add { .. }) {
                self.add_url.set(String::new());
                self.add_weight.set("1".into());
            }
            self.result.set(Some(out));
            self.busy.set(false);
        });
    }
}

// === components ===

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let ctx = Ctx::new();
    ctx.start();
    let stale = move || ctx.link.with(|l| l.is_stale(ctx.now.get()));
    view! {
        <TopBar ctx=ctx />
        <main id="main" class:stale=stale aria-busy=move || (!ctx.dash.with(|d| d.has_data())).to_string()>
            <Summary ctx=ctx />
            <Backends ctx=ctx />
            <RoutesPanel ctx=ctx />
            <div class="panels">
                <ClusterPanel ctx=ctx />
                <ConfigPanel ctx=ctx />
                <RateLimitPanel ctx=ctx />
                <TlsPanel ctx=ctx />
            </div>
            <EventLog ctx=ctx />
        </main>
        <ConfirmDialog ctx=ctx />
        <TokenDialog ctx=ctx />
    }
}

fn tone_class(base: &str, tone: Tone) -> String {
    format!("{base} {}", tone.class())
}

/// A state word with its tone (colour plus a symbol, so colour is never alone).
fn badge_view(b: Badge, testid: &'static str) -> impl IntoView {
    view! {
        <span class=tone_class("badge", b.tone) data-testid=testid data-tone=b.tone.class() title=b.detail>
            {b.text}
        </span>
    }
}

#[component]
fn TopBar(ctx: Ctx) -> impl IntoView {
    let status = Memo::new(move |_| ctx.link.with(|l| l.status(ctx.now.get())));
    let header = Memo::new(move |_| ctx.dash.with(|d| d.header()));
    let meta = move || {
        header.with(|h| match h {
            Some(h) => format!(
                "replica {} · version {} · {}",
                h.replica, h.version, h.strategy
            ),
            None => String::new(),
        })
    };
    let auth_required = move || header.with(|h| h.as_ref().is_some_and(|h| h.auth_required));
    view! {
        <header class="top">
            <div class="brand">
                <h1>"Switchyard"</h1>
                <span class="meta" data-testid="replica-meta">{meta}</span>
            </div>
            <div class="top-right">
                <span
                    data-testid="link-status"
                    data-state=move || status.with(|s| s.state)
                    class=move || status.with(|s| tone_class("badge link", s.tone))
                    role="status"
                    aria-live="polite"
                >
                    {move || status.with(|s| s.text.clone())}
                </span>
                <span class="token-state" data-testid="token-state">
                    {move || match (ctx.token.with(|t| t.is_some()), auth_required()) {
                        (true, _) => "token set for this tab",
                        (false, true) => "changes need the admin token",
                        (false, false) => "no token needed",
                    }}
                </span>
                <button
                    id="token-button"
                    type="button"
                    on:click=move |_| {
                        ctx.token_prompt.set(Some("Enter the proxy's admin token.".into()))
                    }
                >
                    {move || if ctx.token.with(Option::is_some) { "Change token" } else { "Enter token" }}
                </button>
                <Show when=move || ctx.token.with(Option::is_some)>
                    <button id="token-forget" type="button" on:click=move |_| ctx.set_token(None)>
                        "Forget token"
                    </button>
                </Show>
            </div>
        </header>
    }
}

#[component]
fn Summary(ctx: Ctx) -> impl IntoView {
    let header = Memo::new(move |_| ctx.dash.with(|d| d.header()));
    let field = move |f: fn(&crate::model::Header) -> String| {
        move || header.with(|h| h.as_ref().map(f).unwrap_or_else(|| "…".into()))
    };
    view! {
        <section class="summary" aria-label="Totals">
            <div class="stat"><span class="label">"requests/s"</span><span class="value" data-testid="total-rps">{field(|h| h.rps.clone())}</span></div>
            <div class="stat"><span class="label">"error rate"</span><span class="value" data-testid="total-error-rate">{field(|h| h.error_rate.clone())}</span></div>
            <div class="stat"><span class="label">"in flight"</span><span class="value">{field(|h| h.in_flight.clone())}</span></div>
            <div class="stat"><span class="label">"retries"</span><span class="value">{field(|h| h.retries.clone())}</span></div>
            <div class="stat"><span class="label">"last update (UTC)"</span><span class="value" data-testid="updated">{field(|h| h.updated.clone())}</span></div>
        </section>
    }
}

#[component]
fn Backends(ctx: Ctx) -> impl IntoView {
    let rows = Memo::new(move |_| ctx.dash.with(|d| d.backends()));
    let gone = Memo::new(move |_| ctx.dash.with(|d| d.gone()));
    let groups = Memo::new(move |_| ctx.dash.with(|d| d.service_groups()));
    let has_data = move || ctx.dash.with(|d| d.has_data());
    view! {
        <section class="backends" aria-labelledby="backends-title">
            <div class="section-head">
                <h2 id="backends-title">"Backends"</h2>
                <span class="count" data-testid="backend-count">
                    {move || if has_data() { format!("{} in the running set", rows.with(Vec::len)) } else { String::new() }}
                </span>
            </div>
            <AddForm ctx=ctx />
            <ActionResult ctx=ctx />
            <Show when=has_data fallback=|| view! { <p class="placeholder">"Waiting for the first update…"</p> }>
                <Show when=move || rows.with(Vec::is_empty)>
                    <p class="placeholder">"No backends in the running set."</p>
                </Show>
                <div data-testid="backend-list">
                    <For
                        each=move || groups.get()
                        key=|g| g.clone()
                        children=move |(service, ids)| view! {
                            <div class="service-group" data-testid="service-group" data-service=service.clone()>
                                <h3 class="service-name">{format!("service {service}")}
                                    <span class="count">{format!(" · {} backends", ids.len())}</span>
                                </h3>
                                <div class="cards">
                                    {ids.into_iter().map(|id| view! { <BackendCard ctx=ctx url=id rows=rows /> }).collect_view()}
                                </div>
                            </div>
                        }
                    />
                </div>
            </Show>
            <Show when=move || gone.with(|g| !g.is_empty())>
                <h3>"Removed backends"</h3>
                <ul class="gone" data-testid="gone-list">
                    <For
                        each=move || gone.get()
                        key=|g| (g.url.clone(), g.weight)
                        children=move |g| gone_row(ctx, g)
                    />
                </ul>
            </Show>
        </section>
    }
}

fn gone_row(ctx: Ctx, g: GoneRow) -> impl IntoView {
    let action = Action::ReAdd {
        url: g.url.clone(),
        weight: g.weight,
    };
    view! {
        <li data-testid="gone-row" data-url=g.url.clone()>
            <code class="url">{g.url.clone()}</code>
            <span class="badge neutral">"removed"</span>
            <span class="muted">{format!("weight {}", g.weight)}</span>
            <button type="button" data-testid="readd" on:click=move |_| ctx.pending.set(Some(action.clone()))>
                "Re-add…"
            </button>
        </li>
    }
}

#[component]
fn BackendCard(ctx: Ctx, url: String, rows: Memo<Vec<BackendRow>>) -> impl IntoView {
    let key = url.clone();
    let row = Memo::new(move |_| rows.with(|rs| rs.iter().find(|r| r.id == key).cloned()));
    let text = move |f: fn(&BackendRow) -> String| {
        move || row.with(|r| r.as_ref().map(f).unwrap_or_default())
    };
    let badge = move |f: fn(&BackendRow) -> Badge, testid: &'static str| {
        let b = Memo::new(move |_| row.with(|r| r.as_ref().map(f)));
        view! {
            <span
                data-testid=testid
                class=move || b.with(|b| tone_class("badge", b.as_ref().map_or(Tone::Neutral, |b| b.tone)))
                data-tone=move || b.with(|b| b.as_ref().map_or(Tone::Neutral, |b| b.tone).class())
                title=move || b.with(|b| b.as_ref().map(|b| b.detail.clone()).unwrap_or_default())
            >
                {move || b.with(|b| b.as_ref().map(|b| b.text.clone()).unwrap_or_default())}
            </span>
        }
    };
    let draining = Memo::new(move |_| row.with(|r| r.as_ref().is_some_and(|r| r.draining)));
    let charts =
        Memo::new(move |_| row.with(|r| r.as_ref().map(|r| r.charts.clone()).unwrap_or_default()));
    let action_url = url.clone();
    let button = move || {
        let url = action_url.clone();
        if draining.get() {
            view! {
                <button type="button" data-testid="readd" on:click=move |_| {
                    let weight = ctx.dash.with_untracked(|d| d.known_weight(&url));
                    ctx.pending.set(Some(Action::ReAdd { url: url.clone(), weight }));
                }>"Re-add…"</button>
            }
            .into_any()
        } else {
            view! {
                <button type="button" data-testid="drain" on:click=move |_| {
                    ctx.pending.set(Some(Action::Drain { url: url.clone() }));
                }>"Drain…"</button>
            }
            .into_any()
        }
    };
    view! {
        <article
            class="card backend"
            data-testid="backend-row"
            data-url=url.clone()
            data-state=move || row.with(|r| r.as_ref().map(|r| r.status.tone.class()).unwrap_or("neutral"))
        >
            <header>
                <h3 class="url"><code>{text(|r| r.url.clone())}</code></h3>
                {badge(|r| r.status.clone(), "status")}
            </header>
            <p class="sub">
                <span data-testid="source">{text(|r| format!("from {}", r.source))}</span>
                " · "
                <span data-testid="weight">{text(|r| format!("weight {}", r.weight))}</span>
            </p>
            <dl class="facts">
                <div><dt>"health"</dt><dd>{badge(|r| r.health.clone(), "health")}</dd></div>
                <div><dt>"circuit"</dt><dd>{badge(|r| r.circuit.clone(), "circuit")}</dd></div>
                <div><dt>"ejection"</dt><dd>{badge(|r| r.ejection.clone(), "ejection")}</dd></div>
                <div><dt>"active"</dt><dd data-testid="active">{text(|r| r.active.clone())}</dd></div>
                <div><dt>"requests/s"</dt><dd data-testid="rps">{text(|r| r.rps.clone())}</dd></div>
                <div><dt>"error rate"</dt><dd data-testid="error-rate">{text(|r| r.error_rate.clone())}</dd></div>
                <div><dt>"p50"</dt><dd data-testid="p50">{text(|r| r.p50.clone())}</dd></div>
                <div><dt>"p99"</dt><dd data-testid="p99">{text(|r| r.p99.clone())}</dd></div>
                <div><dt>"requests"</dt><dd data-testid="requests">{text(|r| r.requests.clone())}</dd></div>
                <div><dt>"errors"</dt><dd data-testid="errors">{text(|r| r.errors.clone())}</dd></div>
            </dl>
            {move || row.with(|r| r.as_ref().and_then(|r| r.cluster.clone())).map(|b| view! {
                <p class=tone_class("cluster-line", b.tone) data-testid="cluster-figures">{b.text}</p>
            })}
            <div class="charts">
                {move || charts.get().into_iter().map(chart_view).collect_view()}
            </div>
            <footer>{button}</footer>
        </article>
    }
}

fn chart_view(c: Chart) -> impl IntoView {
    let view_box = format!("0 0 {} {}", chart::WIDTH, chart::HEIGHT);
    let mid = chart::HEIGHT / 2.0;
    let label = format!(
        "{}: {}",
        c.title,
        c.lines
            .iter()
            .map(|l| l.label.clone())
            .collect::<Vec<_>>()
            .join(", ")
    );
    view! {
        <figure class="chart">
            <figcaption>
                <span class="title">{c.title}</span>
                <span class="max">{format!("top {}", c.max_label)}</span>
            </figcaption>
            <svg viewBox=view_box preserveAspectRatio="none" role="img" aria-label=label>
                <line class="grid" x1="0" x2=chart::WIDTH.to_string() y1=mid.to_string() y2=mid.to_string() />
                {c.lines.iter().map(|l| view! {
                    <path class=format!("line {}", l.class) d=l.path.clone() vector-effect="non-scaling-stroke" />
                }).collect_view()}
            </svg>
            <div class="legend">
                {c.lines.into_iter().map(|l| view! { <span class=format!("key {}", l.class)>{l.label}</span> }).collect_view()}
            </div>
        </figure>
    }
}

#[component]
fn AddForm(ctx: Ctx) -> impl IntoView {
    let needs_token =
        move || ctx.dash.with(|d| d.auth_required()) && ctx.token.with(Option::is_none);
    view! {
        <form
            id="add-form"
            class="add"
            novalidate
            on:submit=move |ev| {
                ev.prevent_default();
                ctx.submit_add();
            }
        >
            <label>
                <span>"Backend URL"</span>
                <input
                    id="add-url"
                    type="text"
                    placeholder="http://10.0.0.5:8080"
                    autocomplete="off"
                    spellcheck="false"
                    prop:value=move || ctx.add_url.get()
                    on:input=move |ev| ctx.add_url.set(event_target_value(&ev))
                />
            </label>
            <label class="weight">
                <span>"Weight"</span>
                <input
                    id="add-weight"
                    type="text"
                    inputmode="numeric"
                    autocomplete="off"
                    prop:value=move || ctx.add_weight.get()
                    on:input=move |ev| ctx.add_weight.set(event_target_value(&ev))
                />
            </label>
            <button id="add-submit" type="submit" class="primary" disabled=move || ctx.busy.get()>
                "Add backend…"
            </button>
            <Show when=needs_token>
                <p class="hint">"Changes need the admin token: use " <em>"Enter token"</em> " above first."</p>
            </Show>
            {move || ctx.add_error.get().map(|e| view! {
                <p class="form-error" data-testid="add-error" role="alert">{e}</p>
            })}
        </form>
    }
}

#[component]
fn ActionResult(ctx: Ctx) -> impl IntoView {
    view! {
        <div class="result-slot" aria-live="polite">
            <Show when=move || ctx.busy.get()>
                <p class="result neutral" data-testid="action-busy">"sending…"</p>
            </Show>
            {move || ctx.result.get().map(|o| {
                let tone = if o.ok { Tone::Good } else { Tone::Bad };
                view! {
                    <p class=tone_class("result", tone) data-testid="action-result" data-ok=o.ok.to_string() role="status">
                        <strong>{if o.ok { "Done: " } else { "Failed: " }}</strong>
                        {o.message}
                        <button type="button" class="link-button" aria-label="dismiss" on:click=move |_| ctx.result.set(None)>"×"</button>
                    </p>
                }
            })}
        </div>
    }
}

#[component]
fn RoutesPanel(ctx: Ctx) -> impl IntoView {
    let routes = Memo::new(move |_| ctx.dash.with(|d| d.routes()));
    view! {
        <Show when=move || routes.with(|r| !r.is_empty())>
            <section class="card routes" aria-labelledby="routes-title" data-testid="routes">
                <h2 id="routes-title">"Routes"</h2>
                <table>
                    <thead><tr><th>"#"</th><th>"name"</th><th>"match"</th><th>"action"</th><th>"to"</th></tr></thead>
                    <tbody>
                        <For
                            each=move || routes.get()
                            key=|r| (r.index, r.name.clone(), r.matches.clone(), r.action.clone(), r.detail.clone())
                            children=move |r| {
                                let to = if r.services.len() > 1 {
                                    r.services.iter().map(|(s, w)| format!("{s} ({w})")).collect::<Vec<_>>().join(", ")
                                } else {
                                    r.services.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>().join(", ")
                                };
                                let to = if r.detail.is_empty() { to } else if to.is_empty() { r.detail.clone() } else { format!("{to} · {}", r.detail) };
                                view! {
                                    <tr data-testid="route-row">
                                        <td>{r.index}</td>
                                        <td>{r.name.clone()}</td>
                                        <td><code>{r.matches.clone()}</code></td>
                                        <td>{r.action.clone()}</td>
                                        <td>{to}</td>
                                    </tr>
                                }
                            }
                        />
                    </tbody>
                </table>
            </section>
        </Show>
    }
}

#[component]
fn ClusterPanel(ctx: Ctx) -> impl IntoView {
    let info = Memo::new(move |_| ctx.dash.with(|d| d.cluster()));
    view! {
        <section class="panel cluster" aria-labelledby="cluster-title" data-testid="cluster">
            <h2 id="cluster-title">"Cluster"</h2>
            {move || info.get().map(|c| view! {
                <p class="row">
                    <span data-testid="cluster-mode">{c.mode}</span>
                    {badge_view(c.converged, "converged")}
                    {badge_view(c.store, "store")}
                </p>
                <div class="table-wrap">
                    <table>
                        <thead><tr>
                            <th scope="col">"replica"</th>
                            <th scope="col">"version"</th>
                            <th scope="col">"config"</th>
                            <th scope="col">"heartbeat"</th>
                            <th scope="col">"uptime"</th>
                        </tr></thead>
                        <tbody>
                            {c.replicas.into_iter().map(|r| {
                                let id = r.id.clone();
                                view! {
                                <tr data-testid="replica-row" data-id=id>
                                    <td>
                                        <code>{r.id}</code>
                                        {r.is_self.then_some(" (this one)")}
                                        <span class="muted">{(!r.address.is_empty()).then(|| format!(" {}", r.address))}</span>
                                    </td>
                                    <td>{r.version}</td>
                                    <td>
                                        <code>{r.commit}</code>
                                        {format!(" gen {}", r.generation)}
                                        {r.differs.then(|| view! { <span class="badge warn">"differs"</span> })}
                                    </td>
                                    <td>{r.heartbeat}</td>
                                    <td>{r.uptime}</td>
                                </tr>
                            }}).collect_view()}
                        </tbody>
                    </table>
                </div>
            })}
        </section>
    }
}

#[component]
fn ConfigPanel(ctx: Ctx) -> impl IntoView {
    let info = Memo::new(move |_| ctx.dash.with(|d| d.config()));
    view! {
        <section class="panel" aria-labelledby="config-title" data-testid="config">
            <h2 id="config-title">"Config"</h2>
            {move || info.get().map(|c| view! {
                <dl class="kv">
                    <div><dt>"source"</dt><dd><code>{c.source}</code></dd></div>
                    <div><dt>"commit"</dt><dd><code data-testid="config-commit">{c.commit}</code>{format!(" · generation {}", c.generation)}</dd></div>
                    <div><dt>"last reload"</dt><dd data-testid="config-applied">{c.applied}</dd></div>
                    <div><dt>"last error"</dt><dd data-testid="config-error">
                        {match c.last_error {
                            Some(e) => view! { <span class="badge bad">"refused"</span>" "<span>{e}</span> }.into_any(),
                            None => view! { <span class="badge good">"none"</span> }.into_any(),
                        }}
                    </dd></div>
                    <div><dt>"drift"</dt><dd>
                        {badge_view(c.drift, "drift")}
                        <ul class="drift">
                            {c.drift_lines.into_iter().map(|l| view! { <li><code>{l}</code></li> }).collect_view()}
                        </ul>
                    </dd></div>
                </dl>
            })}
        </section>
    }
}

#[component]
fn RateLimitPanel(ctx: Ctx) -> impl IntoView {
    let info = Memo::new(move |_| ctx.dash.with(|d| d.rate_limit()));
    view! {
        <section class="panel" aria-labelledby="ratelimit-title" data-testid="rate-limit">
            <h2 id="ratelimit-title">"Rate limit"</h2>
            {move || info.get().map(|r| view! {
                <p class="row">{badge_view(r.state, "rate-limit-state")}<span>{r.limit}</span></p>
                <dl class="kv">
                    <div><dt>"admitted"</dt><dd data-testid="admitted">{format!("{} ({})", r.admitted, r.admitted_rate)}</dd></div>
                    <div><dt>"rejected"</dt><dd data-testid="rejected">{format!("{} ({})", r.rejected, r.rejected_rate)}</dd></div>
                </dl>
                {chart_view(r.chart)}
            })}
        </section>
    }
}

#[component]
fn TlsPanel(ctx: Ctx) -> impl IntoView {
    let info = Memo::new(move |_| ctx.dash.with(|d| d.tls()));
    view! {
        {move || info.get().map(|t| view! {
            <section class="panel" aria-labelledby="tls-title" data-testid="tls">
                <h2 id="tls-title">"TLS"</h2>
                <dl class="kv">
                    <div><dt>"listener"</dt><dd><code>{t.listen}</code></dd></div>
                    <div><dt>"protocols"</dt><dd>{t.protocols}</dd></div>
                    <div><dt>"handshakes"</dt><dd>{t.handshakes}</dd></div>
                    {t.acme.map(|(b, text)| view! {
                        <div><dt>"ACME"</dt><dd>{badge_view(b, "acme-state")}" "<span>{text}</span></dd></div>
                    })}
                </dl>
                <ul class="certs" data-testid="cert-list">
                    {t.certs.into_iter().map(|c| view! {
                        <li data-testid="cert-row">
                            <code>{c.names}</code>" "
                            {badge_view(c.expiry, "cert-expiry")}
                            <span class="muted">{format!(" {} · serial {}", c.source, c.serial)}</span>
                            {c.error.map(|e| view! { <p><span class="badge bad">"reload refused"</span>" "<span>{e}</span></p> })}
                        </li>
                    }).collect_view()}
                </ul>
            </section>
        })}
    }
}

#[component]
fn EventLog(ctx: Ctx) -> impl IntoView {
    let events = Memo::new(move |_| ctx.dash.with(|d| d.events()));
    view! {
        <section class="events" aria-labelledby="events-title">
            <h2 id="events-title">"Events " <span class="muted">"(newest first, UTC)"</span></h2>
            <Show when=move || events.with(Vec::is_empty)>
                <p class="placeholder">"Nothing has happened yet."</p>
            </Show>
            <ol class="event-log" data-testid="event-log">
                <For
                    each=move || events.get()
                    key=|e| e.key.clone()
                    children=|e| view! {
                        <li data-testid="event-row" data-kind=e.kind>
                            <time>{e.time}</time>
                            <span class=tone_class("badge", e.tone)>{e.kind}</span>
                            {(!e.backend.is_empty()).then(|| view! { <code>{e.backend}</code> })}
                            <span class="message">{e.message}</span>
                        </li>
                    }
                />
            </ol>
        </section>
    }
}

#[component]
fn ConfirmDialog(ctx: Ctx) -> impl IntoView {
    // Focus goes to the confirm button when the dialog opens, so Enter confirms and
    // Escape cancels without reaching for the mouse.
    let yes = NodeRef::<leptos::html::Button>::new();
    Effect::new(move |_| {
        if let Some(button) = yes.get() {
            let _ = button.focus();
        }
    });
    view! {
        {move || ctx.pending.get().map(|a| view! {
            <div class="overlay">
                <div
                    class="dialog"
                    role="dialog"
                    aria-modal="true"
                    aria-labelledby="confirm-title"
                    data-testid="confirm-dialog"
                    on:keydown=move |ev| if ev.key() == "Escape" { ctx.pending.set(None) }
                >
                    <h2 id="confirm-title">"Please confirm"</h2>
                    <p data-testid="confirm-text">{a.question()}</p>
                    <div class="buttons">
                        <button type="button" data-testid="confirm-no" on:click=move |_| ctx.pending.set(None)>"Cancel"</button>
                        <button type="button" class="primary" data-testid="confirm-yes" node_ref=yes on:click=move |_| ctx.confirm()>
                            {a.verb()}
                        </button>
                    </div>
                </div>
            </div>
        })}
    }
}

#[component]
fn TokenDialog(ctx: Ctx) -> impl IntoView {
    let input = RwSignal::new(String::new());
    let field = NodeRef::<leptos::html::Input>::new();
    Effect::new(move |_| {
        if let Some(el) = field.get() {
            let _ = el.focus();
        }
    });
    view! {
        {move || ctx.token_prompt.get().map(|reason| view! {
            <div class="overlay">
                <form
                    class="dialog"
                    role="dialog"
                    aria-modal="true"
                    aria-labelledby="token-title"
                    data-testid="token-dialog"
                    on:keydown=move |ev| if ev.key() == "Escape" { ctx.token_prompt.set(None) }
                    on:submit=move |ev| {
                        ev.prevent_default();
                        ctx.set_token(Some(input.get_untracked()));
                        input.set(String::new());
                    }
                >
                    <h2 id="token-title">"Admin token"</h2>
                    <p data-testid="token-reason">{reason}</p>
                    <label>
                        <span>"Token"</span>
                        <input
                            id="token-input"
                            type="password"
                            autocomplete="off"
                            node_ref=field
                            prop:value=move || input.get()
                            on:input=move |ev| input.set(event_target_value(&ev))
                        />
                    </label>
                    <p class="muted">"Kept in this browser tab only (sessionStorage), sent as a bearer token."</p>
                    <div class="buttons">
                        <button type="button" data-testid="token-cancel" on:click=move |_| ctx.token_prompt.set(None)>"Cancel"</button>
                        <button type="submit" class="primary" id="token-submit">"Use token"</button>
                    </div>
                </form>
            </div>
        })}
    }
}

/// Mounts the app on the page's `<body>`.
pub fn mount() {
    leptos::mount::mount_to_body(App);
}
