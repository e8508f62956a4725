//! The Observability dashboard in a real headless Chromium (Debian `chromium`), served by the
//! real binary after data went through the pipelines and `POST /v1/metrics`.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;

/// Runs headless Chromium on `url`; returns (stdout, stderr).
fn chromium(profile: &Path, url: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium (Debian package) must be installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn record_data(s: &Server) {
    for (tenant, plan) in [
        ("tenant-a", "pro"),
        ("tenant-b", "free"),
        ("tenant-a", "enterprise"),
    ] {
        assert_eq!(login(s, tenant, plan).0, 200);
    }
    let (st, _) = post(
        s,
        "/v1/pipelines/invoice.created/execute",
        Some(EXEC),
        json!({"tenant": "tenant-a", "event": {"amount": 120.0, "currency": "EUR", "plan": "pro"}}),
    );
    assert_eq!(st, 200);
    let (st, r) = post(
        s,
        "/v1/metrics",
        Some(EXEC),
        json!({"points": [
            {"name": "jwks.active_key.age_ms", "kind": "gauge", "value": 3_600_000.0},
            {"name": "email.send.success", "kind": "counter", "value": 9, "tags": {"type": "verify"}},
            {"name": "email.send.error", "kind": "counter", "value": 1, "tags": {"type": "verify"}},
            {"name": "auth.login.attempt", "kind": "counter", "value": 3, "tags": {"method": "password", "status": "fail"}},
            {"name": "authz.rebac.traversal_depth", "kind": "histogram", "value": 4, "tags": {"entity_type": "doc"}},
            {"name": "authz.decision.count", "kind": "counter", "value": 5, "tags": {"result": "allow", "source": "rebac"}},
            {"name": "admin.session.revoke", "kind": "counter", "value": 2, "tags": {"actor_type": "human"}},
            {"name": "admin.policy.change.count", "kind": "counter", "value": 1, "tags": {"action": "update"}}
        ]}),
    );
    assert_eq!((st, r["accepted"].as_u64()), (200, Some(8)), "{r}");
}

#[test]
fn the_dashboard_renders_every_panel_with_its_series_in_a_real_browser() {
    let s = Server::start(&[]);
    record_data(&s);
    poll("the data to be flushed", || {
        let (_, n) = get(&s, "/v1/metrics/names", Some(ADMIN));
        let names: Vec<String> = n["names"]
            .as_array()?
            .iter()
            .filter_map(|x| x["name"].as_str().map(str::to_string))
            .collect();
        [
            "pipeline.exec.duration",
            "logins.by_plan_count",
            "admin.session.revoke",
            "http.request.duration_ms",
            "lua.pool.active",
        ]
        .iter()
        .all(|w| names.iter().any(|n| n == w))
        .then_some(())
    });
    let profile = tempfile::tempdir().unwrap();
    let url = s.url(&format!("/?range=1h&token={ADMIN}"));
    let (dom, stderr) = chromium(profile.path(), &url, &["--dump-dom"]);
    // A healthy database: no failure banner (the fleet test shows it appears in an outage).
    assert!(!dom.contains("data-error="), "{dom}");
    for panel in [
        "system",
        "pipelines",
        "security",
        "user",
        "webhooks",
        "admin",
    ] {
        assert!(
            dom.contains(&format!("data-panel=\"{panel}\"")),
            "panel {panel} missing"
        );
    }
    for series in [
        "data-series=\"p95\"",           // API latency
        "data-series=\"active\"",        // Lua pool
        "data-series=\"user.login\"",    // executions per minute by trigger
        "data-part=\"overhead\"",        // overhead vs script, stacked
        "data-series=\"tenant-a\"",      // user metric per tenant
        "data-series=\"fail password\"", // login failures
        "data-series=\"session revokes\"",
        "data-stat=\"jwks-age\"",
        "data-table=\"slowest-scripts\"",
        "data-table=\"quotas\"",
    ] {
        assert!(dom.contains(series), "{series} missing from the dashboard");
    }
    assert!(dom.contains("badge green"), "a 1 h old key is green");
    assert!(dom.contains("90.0%"), "e-mail success rate");
    // The webhook panel has no data: it names its metrics and how to record them.
    let webhooks = &dom[dom.find("data-panel=\"webhooks\"").unwrap()..];
    let webhooks = &webhooks[..webhooks.find("</section>").unwrap()];
    assert!(
        webhooks.contains("data-hint=\"no-data\"")
            && webhooks.contains("webhook.emit.count")
            && webhooks.contains("POST /v1/metrics"),
        "{webhooks}"
    );
    // Each chart links to the JSON query that feeds it, and nothing is fetched from outside.
    assert!(dom.contains("/v1/metrics/query?name=pipeline.exec.duration"));
    let external = external_references(&dom);
    assert!(external.is_empty(), "external resources: {external:?}");
    for bad in ["Uncaught", "Failed to load resource", "ERR_"] {
        assert!(
            !stderr
                .lines()
                .any(|l| l.contains("CONSOLE") && l.contains(bad)),
            "console error: {stderr}"
        );
    }
    // A screenshot as a test artifact.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        profile.path(),
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2600",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.len() > 10_000 && png.starts_with(b"\x89PNG"));
    // Picking a tenant narrows the user panel.
    let (dom, _) = chromium(
        profile.path(),
        &s.url(&format!(
            "/?range=1h&tenant=tenant-b&metric=logins.by_plan_count&token={ADMIN}"
        )),
        &["--dump-dom"],
    );
    assert!(dom.contains("data-metric=\"logins.by_plan_count\""));
    // The option carries the tenant id exactly (its text alone would lose repeated blanks).
    assert!(
        dom.contains("<option value=\"tenant-b\" selected=\"\">tenant-b</option>"),
        "tenant picker"
    );
}

#[test]
fn without_the_token_the_dashboard_is_refused_and_the_login_form_signs_in() {
    let s = Server::start(&[]);
    let r = ureq::get(&s.url("/")).call();
    match r {
        Err(ureq::Error::Status(401, resp)) => {
            assert!(resp.into_string().unwrap().contains("name=\"token\""))
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(matches!(
        ureq::get(&s.url("/?token=wrong")).call(),
        Err(ureq::Error::Status(401, _))
    ));
    assert!(matches!(
        ureq::get(&s.url(&format!("/?token={EXEC}"))).call(),
        Err(ureq::Error::Status(401, _))
    ));
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let resp = agent
        .post(&s.url("/login"))
        .send_form(&[("token", ADMIN)])
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("luametrics_token="));
    let page = agent
        .get(&s.url("/"))
        .set("Cookie", &cookie)
        .call()
        .unwrap();
    assert_eq!(page.status(), 200);
    // No script, frame or outside resource may run the page; nobody caches or frames it.
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    // The page keeps its own policy (its styles), not the one every other answer gets.
    assert!(csp.contains("style-src 'unsafe-inline'"), "{csp}");
    // Error answers on any path (404, 405, 413) can echo what a request sent: a browser may
    // neither sniff them into a document nor frame them.
    let once = ureq::AgentBuilder::new().build();
    for (what, answer) in [
        ("404", once.get(&s.url("/nope%3Cscript%3E")).call()),
        ("405", once.get(&s.url("/login")).call()),
    ] {
        let Err(ureq::Error::Status(code, resp)) = answer else {
            panic!("{what}: {answer:?}");
        };
        assert_eq!(code.to_string(), what);
        let csp = resp.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{what}: {csp}"
        );
        assert_eq!(
            resp.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
    }
    {
        // A sign-in declaring a body over the server's limit, never sent (`Expect:
        // 100-continue`): answered before any body, so no connection reset races the answer.
        use std::io::{Read, Write};
        let addr = s.base.trim_start_matches("http://").to_string();
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let head = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(head.starts_with("http/1.1 413"), "{head}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; frame-ancestors 'none'")
                && head.contains("x-content-type-options: nosniff"),
            "{head}"
        );
    }
    // A sign-in posted from another site (login CSRF: an admin signed in as an attacker's
    // tenant) is refused, and sets no cookie.
    for (name, value) in [
        ("Origin", "https://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ] {
        match agent
            .post(&s.url("/login"))
            .set(name, value)
            .send_form(&[("token", ADMIN)])
        {
            Err(ureq::Error::Status(403, resp)) => assert!(resp.header("set-cookie").is_none()),
            other => panic!("{name}: expected 403, got {other:?}"),
        }
    }
    // The server's own page posts with its own origin.
    let own = s.url("");
    let resp = agent
        .post(&s.url("/login"))
        .set("Origin", own.trim_end_matches('/'))
        .send_form(&[("token", ADMIN)])
        .unwrap();
    assert_eq!(resp.status(), 303);
    let html = page.into_string().unwrap();
    assert!(html.contains("data-panel=\"system\""));
    // A fresh server with no data: every panel explains which metrics feed it.
    for panel in ["security", "webhooks", "admin"] {
        let section = &html[html.find(&format!("data-panel=\"{panel}\"")).unwrap()..];
        assert!(
            section[..section.find("</section>").unwrap()].contains("data-hint=\"no-data\""),
            "{panel}"
        );
    }
}

// A tenant's read token opens that tenant's own page in a real browser: its metrics and its
// usage, no host panel, no other tenant, no external resource.
#[test]
fn a_tenant_token_opens_its_own_page_in_a_real_browser() {
    let s = Server::start(&[]);
    record_data(&s);
    let (st, minted) = call(
        ureq::post(&s.url("/v1/tenants/tenant-a/tokens"))
            .set("Authorization", &format!("Bearer {ADMIN}")),
        Some(json!({})),
    );
    assert_eq!(st, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    // Wait for the tenant's rows (and its usage counts) to be written.
    poll("tenant-a's usage in the store", || {
        let (_, u) = get(&s, "/v1/tenant/usage?from=-1h", Some(&token));
        (u["range"]["points"]["accepted"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let profile = tempfile::tempdir().unwrap();
    let url = s.url(&format!("/?range=1h&tenant=tenant-b&token={token}"));
    let (dom, stderr) = chromium(profile.path(), &url, &["--dump-dom"]);
    assert!(dom.contains("data-panel=\"user\""), "{dom}{stderr}");
    assert!(dom.contains("data-panel=\"usage\""), "{dom}");
    assert!(dom.contains("logins.by_plan_count"), "{dom}");
    assert!(dom.contains("data-table=\"usage\""), "{dom}");
    for absent in ["data-panel=\"system\"", "data-panel=\"admin\"", "tenant-b"] {
        assert!(!dom.contains(absent), "{absent} shown to tenant-a: {dom}");
    }
    assert!(external_references(&dom).is_empty(), "{dom}");
}

/// Every attribute value (of any element) and style text in `html` that points outside the
/// page's origin. In attributes that hold a URL (`href`, `src`, `action`...) any absolute URL
/// with a fetching scheme or a protocol-relative `//host` counts; in every other attribute, a
/// value that starts with a network URL (`http:`, `https:`, `//`...). CSS `url(...)` and
/// `@import` anywhere count too. Relative links to the server itself are fine.
fn external_references(html: &str) -> Vec<String> {
    const NETWORK: [&str; 6] = ["http:", "https:", "ftp:", "ws:", "wss:", "//"];
    const URL_ATTRS: [&str; 14] = [
        "href",
        "src",
        "srcset",
        "action",
        "formaction",
        "poster",
        "data",
        "xlink:href",
        "background",
        "cite",
        "longdesc",
        "manifest",
        "ping",
        "icon",
    ];
    fn absolute(v: &str) -> bool {
        let v = v
            .trim()
            .trim_start_matches(['"', '\''])
            .to_ascii_lowercase();
        v.starts_with("//")
            || v.split_once(':').is_some_and(|(scheme, _)| {
                !scheme.is_empty()
                    && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
                    // Schemes that fetch nothing.
                    && !["data", "javascript", "about", "mailto"].contains(&scheme)
            })
    }
    fn network(v: &str) -> bool {
        let v = v
            .trim()
            .trim_start_matches(['"', '\''])
            .to_ascii_lowercase();
        NETWORK.iter().any(|p| v.starts_with(p))
    }
    let mut found = Vec::new();
    let lower = html.to_ascii_lowercase();
    // CSS anywhere (style elements and attributes): url(...) and @import.
    for (i, _) in lower.match_indices("url(") {
        let arg: String = html[i + 4..].chars().take_while(|&c| c != ')').collect();
        if absolute(&arg) {
            found.push(format!("url({arg})"));
        }
    }
    for (i, _) in lower.match_indices("@import") {
        let arg: String = html[i + 7..].chars().take_while(|&c| c != ';').collect();
        if absolute(arg.trim().trim_start_matches("url(")) {
            found.push(format!("@import{arg}"));
        }
    }
    // Attributes of every tag: name=value pairs.
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        let tag = &rest[open + 1..];
        let close = tag.find('>').unwrap_or(tag.len());
        let inner = &tag[..close];
        for (i, _) in inner.match_indices('=') {
            let name: String = inner[..i]
                .trim_end()
                .chars()
                .rev()
                .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
                .to_ascii_lowercase();
            let value_start = inner[i + 1..].trim_start();
            let value: String = match value_start.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    value_start[1..].chars().take_while(|&c| c != q).collect()
                }
                _ => value_start
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .collect(),
            };
            // srcset-style lists: each entry starts with a URL.
            let urls = || {
                value
                    .split(',')
                    .map(|p| p.split_whitespace().next().unwrap_or(""))
            };
            let external = if URL_ATTRS.contains(&name.as_str()) {
                urls().any(absolute)
            } else {
                network(&value)
            };
            if external {
                found.push(format!("{name}={value}"));
            }
        }
        rest = &tag[close..];
    }
    found
}

#[test]
fn the_external_reference_scan_finds_what_it_must() {
    assert!(external_references(r#"<a href="/v1/metrics/query?name=x&q=status:fail">x</a><svg><path d="M0 0"/></svg><span data-q="status:fail" title="a: b"></span>"#).is_empty());
    for page in [
        r#"<img src="https://cdn.example/x.png">"#,
        r#"<link rel=stylesheet href=//cdn.example/a.css>"#,
        r#"<div style="background: url('http://x/y.png')"></div>"#,
        r#"<style>@import "https://fonts.example/f.css";</style>"#,
        r#"<use xlink:href="HTTP://evil/x.svg#a"/>"#,
        r#"<img srcset="/a.png 1x, https://x/b.png 2x">"#,
        r#"<form action='ftp://x/'></form>"#,
        r#"<div data-src="https://x/y.js"></div>"#,
        r#"<object data="gopher://x/"></object>"#,
    ] {
        assert!(!external_references(page).is_empty(), "{page}");
    }
}
