//! `luametrics serve` as a sidecar: the real binary on a random local port, a temporary
//! database, real HTTP, `promtool` and a real Prometheus server (Debian `prometheus`).

mod common;

use common::*;
use luametrics::store::{Location, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[test]
fn execute_then_query_and_the_timings_add_up() {
    let s = Server::start(&[]);
    let (status, o) = login(&s, "acme", "pro");
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["decision"]["decision"], "allow");
    assert_eq!(o["context"]["risk"], "low");
    // The nodes run one after another, each timed by its engine; the pipeline's total is
    // measured separately around all of them, so it bounds their sum.
    let node_total: f64 = o["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["timings"]["total_ms"].as_f64().unwrap())
        .sum();
    let pipeline_total = o["timings"]["total_ms"].as_f64().unwrap();
    assert!(node_total > 0.0 && node_total <= pipeline_total, "{o}");
    let sum = poll("the login count to be flushed", || {
        let (st, q) = get(
            &s,
            "/v1/metrics/query?name=logins.by_plan_count&from=-1h&step=1h&agg=sum&group_by=plan",
            Some(ADMIN),
        );
        assert_eq!(st, 200, "{q}");
        q["series"]
            .as_array()
            .filter(|a| !a.is_empty())
            .map(|a| a[0]["points"][0][1].as_f64().unwrap())
    });
    assert_eq!(sum, 1.0);
    // Thousands of filters are a bad query, not a database error (adversary round 7: SQLite
    // refused the statement, a 500).
    let filters: Vec<String> = (0..3_000).map(|i| format!("k{i}:v")).collect();
    let (st, q) = get(
        &s,
        &format!(
            "/v1/metrics/query?name=logins.by_plan_count&from=-1h&step=1h&filter={}",
            filters.join(",")
        ),
        Some(ADMIN),
    );
    assert_eq!(
        (st, q["error"]["code"].as_str()),
        (400, Some("invalid_query")),
        "{q}"
    );
    let (_, names) = get(&s, "/v1/metrics/names", Some(ADMIN));
    assert!(names["names"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == "logins.by_plan_count"));
    let trace_id = o["trace_id"].as_str().unwrap().to_string();
    let trace = poll("the trace", || {
        let (st, t) = get(&s, &format!("/v1/traces/{trace_id}"), Some(ADMIN));
        (st == 200).then_some(t)
    });
    assert_eq!(trace["spans"].as_array().unwrap().len(), 3);
    let (st, list) = get(&s, "/v1/traces?limit=5&status=ok", Some(ADMIN));
    assert_eq!(st, 200);
    assert!(!list["traces"].as_array().unwrap().is_empty());
    let (st, pool) = get(&s, "/v1/pool", Some(ADMIN));
    assert_eq!(st, 200);
    // The login pipeline is a chain: its three nodes share one checkout.
    assert!(pool["checkouts"].as_u64().unwrap() >= 1, "{pool}");
    assert_eq!(get(&s, "/healthz", None).0, 200);
    assert_eq!(get(&s, "/readyz", None).0, 200);
}

#[test]
fn auth_limits_and_errors_are_json_with_stable_codes() {
    let s = Server::start(&[]);
    let code = |r: &(u16, Value)| (r.0, r.1["error"]["code"].as_str().unwrap_or("").to_string());
    assert_eq!(
        code(&get(&s, "/v1/pool", None)),
        (401, "missing_token".into())
    );
    assert_eq!(
        code(&get(&s, "/v1/pool", Some("nope"))),
        (401, "invalid_token".into())
    );
    // A header that is there but not a bearer token in text is a wrong token, not a missing
    // one (another scheme; bytes that are not UTF-8, sent raw).
    let other_scheme = ureq::get(&s.url("/v1/pool"))
        .set("Authorization", &format!("Basic {ADMIN}"))
        .call();
    let Err(ureq::Error::Status(401, r)) = other_scheme else {
        panic!("{other_scheme:?}");
    };
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_token");
    {
        use std::io::Write;
        let addr = s.base.trim_start_matches("http://").to_string();
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"GET /v1/pool HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 401") && answer.contains("invalid_token"),
            "{answer}"
        );
    }
    assert_eq!(
        code(&get(&s, "/v1/pool", Some(EXEC))),
        (403, "forbidden".into())
    );
    assert_eq!(
        code(&post(
            &s,
            "/v1/pipelines/user.login/execute",
            None,
            json!({"tenant": "a"})
        )),
        (401, "missing_token".into())
    );
    // The admin token may execute too.
    assert_eq!(
        post(
            &s,
            "/v1/pipelines/token.issue/execute",
            Some(ADMIN),
            json!({"tenant": "a", "event": {}})
        )
        .0,
        200
    );
    // The server answers 413 before reading the whole body and closes the connection, so the
    // client may see a broken pipe while still writing: retry until it reads the answer.
    let big = json!({"tenant": "a", "event": {"blob": "x".repeat(100_000)}});
    let too_large = (0..200)
        .find_map(|_| {
            let r = ureq::post(&s.url("/v1/pipelines/user.login/execute"))
                .set("Authorization", &format!("Bearer {EXEC}"))
                .send_json(big.clone());
            match r {
                Err(ureq::Error::Status(st, resp)) => Some((st, resp.into_json::<Value>().ok()?)),
                _ => None,
            }
        })
        .expect("a 413 answer");
    assert_eq!(
        (too_large.0, too_large.1["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    // A declared length over the limit is refused before any body arrives (it held the
    // connection until the request timeout, then answered 503; adversary round 7).
    {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        write!(
            conn,
            "POST /v1/pipelines/user.login/execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {EXEC}\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
        )
        .unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 413");
    }
    let r = ureq::post(&s.url("/v1/pipelines/user.login/execute"))
        .set("Authorization", &format!("Bearer {EXEC}"))
        .set("Content-Type", "application/json")
        .send_string("{ not json");
    let (st, v) = match r {
        Err(ureq::Error::Status(st, resp)) => (st, resp.into_json::<Value>().unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (st, v["error"]["code"].as_str().unwrap()),
        (400, "malformed_json")
    );
    assert_eq!(
        code(&post(
            &s,
            "/v1/pipelines/user.login/execute",
            Some(EXEC),
            json!({"event": {}})
        )),
        (400, "invalid_body".into())
    );
    assert_eq!(
        code(&post(
            &s,
            "/v1/pipelines/no.such/execute",
            Some(EXEC),
            json!({"tenant": "a"})
        )),
        (404, "unknown_trigger".into())
    );
    assert_eq!(code(&get(&s, "/nope", None)), (404, "not_found".into()));
    assert_eq!(
        code(&get(
            &s,
            "/v1/metrics/query?name=a.b&step=banana",
            Some(ADMIN)
        )),
        (400, "invalid_query".into())
    );
    assert_eq!(
        code(&get(&s, "/v1/traces/missing", Some(ADMIN))),
        (404, "unknown_trace".into())
    );
    // A script error is a 200 outcome carrying the error, not a 500.
    let (st, o) = post(
        &s,
        "/v1/pipelines/t.broken/execute",
        Some(EXEC),
        json!({"tenant": "a"}),
    );
    assert_eq!(st, 200, "{o}");
    assert_eq!(o["decision"]["decision"], "error");
    assert_eq!(o["decision"]["code"], "runtime_error");
    assert!(o["decision"]["message"]
        .as_str()
        .unwrap()
        .contains("broken.lua:2:"));
    // Rejections of paths, queries and forms are JSON errors too, not axum's plain text.
    let admin = Some(ADMIN);
    assert_eq!(
        code(&get(&s, "/?refresh=abc", admin)),
        (400, "invalid_query".into())
    );
    assert_eq!(
        code(&get(&s, "/v1/traces/%FF%FE", admin)),
        (400, "invalid_path".into())
    );
    assert_eq!(
        code(&post(&s, "/v1/tenants/%FF/tokens", admin, json!({}))),
        (400, "invalid_path".into())
    );
    assert_eq!(
        code(&post(&s, "/login", None, json!({"token": "x"}))),
        (415, "unsupported_media_type".into())
    );
    let form = call(
        ureq::post(&s.url("/login")).set("Content-Type", "application/x-www-form-urlencoded"),
        None,
    );
    assert_eq!(code(&form), (400, "invalid_body".into()));
}

#[test]
fn hosts_record_system_metrics_validated_against_the_catalog() {
    let s = Server::start(&[]);
    let (st, r) = post(
        &s,
        "/v1/metrics",
        Some(EXEC),
        json!({"points": [
            {"name": "auth.login.attempt", "kind": "counter", "value": 2, "tags": {"method": "password", "status": "ok"}},
            {"name": "auth.login.attempt", "kind": "counter", "value": 1, "tags": {"country": "fr"}},
            {"name": "email.send.duration_ms", "kind": "histogram", "value": 12.5, "tags": {"type": "verify"}},
            {"name": "host.cache.size", "kind": "gauge", "value": 3, "tags": {"client": "10.0.0.1"}},
            {"name": "jwks.active_key.age_ms", "kind": "counter", "value": 1}
        ]}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["accepted"], 2);
    let reasons = rejected_reasons(&r);
    assert_eq!(reasons, vec!["undeclared_tag", "pii_tag", "kind_mismatch"]);

    // What no catalog checks: the host's tenant id (the rule of executions and read tokens),
    // its source and its timestamp (adversary round 6: all were stored as given, and an
    // extreme timestamp overflowed the window arithmetic).
    let ok = json!({"method": "password", "status": "ok"});
    let point = |extra: serde_json::Value| {
        let mut p =
            json!({"name": "auth.login.attempt", "kind": "counter", "value": 1, "tags": ok});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (st, r) = post(
        &s,
        "/v1/metrics",
        Some(EXEC),
        json!({"points": [
            point(json!({"tenant": ""})),
            point(json!({"tenant": "a\u{0}b"})),
            point(json!({"tenant": "t".repeat(257)})),
            point(json!({"tenant": "acme\u{200b}"})),
            point(json!({"source": "a\nb"})),
            point(json!({"timestamp_ms": i64::MIN})),
            point(json!({"timestamp_ms": 253_402_300_800_000i64})),
            // Adversary round 13: points dated far ahead held their windows, and the memory
            // bound, until shutdown. A clock a little ahead is fine.
            point(json!({"timestamp_ms": now + 10 * 60_000})),
            point(json!({"tenant": "acme", "source": "service:api", "timestamp_ms": 1_700_000_000_000i64})),
            point(json!({"timestamp_ms": now + 10_000})),
        ]}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["accepted"], 2, "{r}");
    let reasons = rejected_reasons(&r);
    assert_eq!(
        reasons,
        vec![
            "invalid_tenant",
            "invalid_tenant",
            "invalid_tenant",
            "invalid_tenant",
            "invalid_tags",
            "invalid_timestamp",
            "invalid_timestamp",
            "invalid_timestamp"
        ]
    );
}

#[test]
fn the_openapi_document_lists_every_route_and_each_answers() {
    let s = Server::start(&[]);
    let (st, doc) = get(&s, "/v1/openapi.json", None);
    assert_eq!(st, 200);
    let documented: HashSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let routes: HashSet<(String, String)> = luametrics::server::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routes);
    for (method, path) in &routes {
        let concrete = path.replace("{trigger}", "user.login").replace("{id}", "x");
        let req = if method == "get" {
            ureq::get(&s.url(&concrete))
        } else {
            ureq::post(&s.url(&concrete))
        };
        let (_, body) = call(
            req.set("Authorization", &format!("Bearer {ADMIN}")),
            (method == "post").then(|| json!({})),
        );
        let code = body["error"]["code"].as_str().unwrap_or("");
        assert!(
            code != "not_found" && code != "method_not_allowed",
            "{method} {path}: {body}"
        );
    }
}

/// Our own checks, beyond promtool: HELP and TYPE for every family, `_total` on counters,
/// cumulative buckets ending in `+Inf` equal to `_count`, and no series printed twice.
fn check_exposition(text: &str) {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = HashSet::new();
    let mut seen = HashSet::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            types.insert(
                it.next().unwrap().to_string(),
                it.next().unwrap().to_string(),
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            seen.insert(series.to_string()),
            "series printed twice: {series}"
        );
        let value: f64 = value.parse().unwrap();
        let name = series.split('{').next().unwrap();
        let labels = series.strip_prefix(name).unwrap_or("");
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("no TYPE for {name}"))
            .clone();
        assert!(helps.contains(&family), "no HELP for {family}");
        match types[&family].as_str() {
            "counter" => assert!(
                name.ends_with("_total") && family.ends_with("_total"),
                "{name}"
            ),
            "histogram" => {
                if let Some(base) = name.strip_suffix("_bucket") {
                    let le = labels
                        .split("le=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap();
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().unwrap()
                    };
                    let key = format!(
                        "{base}{}",
                        labels
                            .replace(
                                &format!(
                                    ",le=\"{}\"",
                                    labels
                                        .split("le=\"")
                                        .nth(1)
                                        .unwrap()
                                        .split('"')
                                        .next()
                                        .unwrap()
                                ),
                                ""
                            )
                            .replace(
                                &format!(
                                    "le=\"{}\"",
                                    labels
                                        .split("le=\"")
                                        .nth(1)
                                        .unwrap()
                                        .split('"')
                                        .next()
                                        .unwrap()
                                ),
                                ""
                            )
                    );
                    buckets.entry(key).or_default().push((le, value));
                } else if let Some(base) = name.strip_suffix("_count") {
                    counts.insert(format!("{base}{labels}"), value);
                }
            }
            _ => {}
        }
    }
    assert!(!buckets.is_empty());
    for (key, b) in &buckets {
        assert!(
            b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key}: not cumulative {b:?}"
        );
        let last = b.last().unwrap();
        assert!(last.0.is_infinite(), "{key}: no +Inf bucket");
        let plain = key.replace("{}", "").replace("{,", "{");
        let count = counts
            .get(&plain)
            .or_else(|| counts.get(key))
            .unwrap_or_else(|| {
                panic!(
                    "no _count for {key} in {:?}",
                    counts.keys().take(3).collect::<Vec<_>>()
                )
            });
        assert_eq!(last.1, *count, "{key}: +Inf bucket differs from _count");
    }
}

fn promtool() -> &'static str {
    // Debian's prometheus package ships promtool; .ci/run installs it.
    "promtool"
}

#[test]
fn metrics_pass_promtool_and_our_own_checks() {
    let s = Server::start(&[]);
    for (i, plan) in ["free", "pro", "enterprise"].iter().enumerate() {
        for _ in 0..=i {
            assert_eq!(login(&s, "acme", plan).0, 200);
        }
    }
    post(
        &s,
        "/v1/pipelines/invoice.created/execute",
        Some(EXEC),
        json!({"tenant": "globex", "event": {"amount": 42.5, "currency": "EUR", "plan": "pro"}}),
    );
    // Host metrics outside the catalog claim their exported names too, and may not take a
    // label the exposition uses: the second of two metrics printing one family is refused.
    let (st, r) = post(
        &s,
        "/v1/metrics",
        Some(EXEC),
        json!({"points": [
            {"name": "x.y", "kind": "counter", "value": 1},
            {"name": "x.y_total", "kind": "gauge", "value": 2},
            {"name": "p.q", "kind": "gauge", "value": 1, "tags": {"le": "a", "tag_le": "b"}},
            {"name": "host.wait", "kind": "histogram", "value": 2},
            {"name": "host.wait_bucket", "kind": "gauge", "value": 3},
            {"name": "user.logins_by_plan_count", "kind": "gauge", "value": 5}
        ]}),
    );
    assert_eq!(st, 200, "{r}");
    let reasons = rejected_reasons(&r);
    assert_eq!(
        reasons,
        vec![
            "name_conflict",
            "reserved_tag",
            "name_conflict",
            // A host's name printing as a tenant's family (`user_*`) is refused whoever
            // uses it.
            "reserved_prefix"
        ],
        "{r}"
    );
    // Tenants never meet each other's metric names (adversary round 7: a tenant could block
    // another's metric, and probe which names others use): a metric whose names another
    // tenant's metric prints is taken, and withheld from /metrics, which stays valid.
    for (tenant, kind, name) in [
        ("acme", "histogram", "clash.amount"),
        ("globex", "gauge", "clash.amount"),
        ("globex", "gauge", "clash.amount_sum"),
    ] {
        let (st, o) = post(
            &s,
            "/v1/pipelines/t.probe/execute",
            Some(EXEC),
            json!({"tenant": tenant, "event": {"kind": kind, "name": name, "value": 2}}),
        );
        assert_eq!((st, &o["context"]["ok"]), (200, &json!(true)), "{o}");
    }
    // Clients' own method names (any token, before authentication) are one `other` label,
    // never series of their own (adversary round 7: 100,000 methods filled the memory bound).
    use std::io::{Read, Write};
    let addr = s.base.trim_start_matches("http://").to_string();
    for i in 0..50 {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            conn,
            "X{i}Q /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    }
    let text = poll("user metrics in /metrics", || {
        let t = ureq::get(&s.url("/metrics"))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        (t.contains("user_logins_by_plan_count_total")
            && t.contains("x_y_total")
            && t.contains("host_wait_bucket")
            && t.contains("user_invoices_amount_bucket")
            && t.contains("http_request_duration_seconds_bucket")
            && t.contains("method=\"other\"")
            && t.contains("user_clash_amount_bucket")
            && t.contains("luametrics_exposition_withheld 2"))
        .then_some(t)
    });
    assert!(!prints_globex_gauge(&text, "user_clash_amount"), "{text}");
    assert!(
        !text.contains("user_clash_amount_sum{tenant=\"globex\""),
        "{text}"
    );
    assert!(text.contains("tenant=\"acme\""));
    assert!(
        !text.contains("X7Q"),
        "a client's method became a label value"
    );
    check_exposition(&text);
    let path = s.dir.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics on request.
    let om = ureq::get(&s.url("/metrics"))
        .set("Accept", "application/openmetrics-text; version=1.0.0")
        .set("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap();
    assert!(om.content_type().contains("openmetrics"));
    assert!(om.into_string().unwrap().ends_with("# EOF\n"));
    // By default a scrape needs the admin token (the exposition carries every tenant's
    // labels); neither no token nor the execute token will do.
    assert_eq!(get(&s, "/metrics", None).0, 401);
    assert_eq!(get(&s, "/metrics", Some(EXEC)).0, 403);
    // An operator may open it (`server.metrics_requires_token = false`).
    let open = Server::start(&[("LUAMETRICS_SERVER_METRICS_REQUIRES_TOKEN", "false")]);
    assert_eq!(
        ureq::get(&open.url("/metrics")).call().unwrap().status(),
        200
    );
}

/// The reasons of a `POST /v1/metrics` answer's rejected points, in order.
fn rejected_reasons(answer: &Value) -> Vec<&str> {
    answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["reason"].as_str().unwrap())
        .collect()
}

/// Whether the exposition declares `family` a gauge or prints a bare sample of it for globex
/// (a gauge's sample carries the family name itself).
fn prints_globex_gauge(text: &str, family: &str) -> bool {
    text.lines().any(|l| {
        l == format!("# TYPE {family} gauge")
            || l.starts_with(&format!("{family}{{tenant=\"globex\""))
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_the_user_metric_with_its_tenant() {
    let s = Server::start(&[]);
    assert_eq!(login(&s, "acme", "pro").0, 200);
    let target = s.base.trim_start_matches("http://").to_string();
    let port = free_port();
    let cfg = s.dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: luametrics\n    authorization:\n      credentials: {ADMIN}\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let mut prom = Command::new("prometheus")
        .args([
            &format!("--config.file={}", cfg.display()),
            &format!(
                "--storage.tsdb.path={}",
                s.dir.path().join("tsdb").display()
            ),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) must be installed");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(std::mem::replace(
        &mut prom,
        Command::new("true").spawn().unwrap(),
    ));
    let result = poll("Prometheus to scrape the user metric", || {
        let r = ureq::get(&format!("http://127.0.0.1:{port}/api/v1/query"))
            .query("query", "user_logins_by_plan_count_total")
            .call()
            .ok()?;
        let v: Value = r.into_json().ok()?;
        let data = v["data"]["result"].as_array()?.clone();
        (!data.is_empty()).then_some(data)
    });
    assert_eq!(result[0]["metric"]["tenant"], "acme");
    assert_eq!(result[0]["metric"]["plan"], "pro");
    assert_eq!(result[0]["value"][1], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_loses_nothing_accepted() {
    let s = Server::start(&[("LUAMETRICS_RECORDER_WINDOW_MS", "60000")]);
    let base = s.base.clone();
    // Responses received so far: the signal is sent once enough are in, whatever the speed.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..4 {
        let base = base.clone();
        let answered = answered.clone();
        handles.push(std::thread::spawn(move || {
            let mut accepted = 0u64;
            for i in 0..2_000 {
                let r = ureq::post(&format!("{base}/v1/pipelines/token.issue/execute"))
                    .set("Authorization", &format!("Bearer {EXEC}"))
                    .timeout(Duration::from_secs(10))
                    .send_json(json!({"tenant": format!("t{t}"), "event": {"client": "web", "queue_depth": i, "grant_type": "refresh_token"}}));
                match r {
                    Ok(resp) => {
                        let o: Value = resp.into_json().unwrap();
                        accepted += o["nodes"].as_array().unwrap().iter().map(|n| n["accepted"].as_u64().unwrap()).sum::<u64>();
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // The listener closed: the signal arrived.
                    Err(_) => break,
                }
            }
            accepted
        }));
    }
    poll("200 answered requests before the signal", || {
        (answered.load(std::sync::atomic::Ordering::Relaxed) >= 200).then_some(())
    });
    let dir = s.stop();
    let accepted: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(accepted > 0);
    let store = Store::open(Location::File(dir.path().join("m.db")))
        .await
        .unwrap();
    let stored: u64 = store.user_samples_by_tenant().await.unwrap().values().sum();
    assert_eq!(stored, accepted);
}

// A tenant past its engine-time budget is refused before it takes an engine: 429 with
// Retry-After and a stable code, counted per tenant on /metrics; another tenant still runs.
#[test]
fn a_tenant_over_its_engine_time_budget_gets_429_with_retry_after() {
    // A budget refilling at 1 µs of engine time per second: the first execution spends it
    // (any execution measures more than 1 µs of script time) and nothing refills it within
    // the test.
    let s = Server::start(&[
        ("LUAMETRICS_POOL_TENANT_ENGINE_MS_PER_S", "0.001"),
        ("LUAMETRICS_POOL_TENANT_ENGINE_BURST_MS", "0.001"),
    ]);
    assert_eq!(login(&s, "greedy", "pro").0, 200);
    let r = ureq::post(&s.url("/v1/pipelines/user.login/execute"))
        .set("Authorization", &format!("Bearer {EXEC}"))
        .send_json(json!({"tenant": "greedy", "event": {"email": "a@b.example", "plan": "pro"}}));
    let r = match r {
        Err(ureq::Error::Status(429, r)) => r,
        other => panic!("expected 429, got {other:?}"),
    };
    let retry: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "tenant_budget", "{body}");
    assert_eq!(body["error"]["details"]["tenant"], "greedy", "{body}");
    assert!(body["error"]["details"]["retry_after_ms"].as_u64().unwrap() >= 1);
    assert_eq!(login(&s, "modest", "free").0, 200, "another tenant runs");
    let text = poll("the throttled counter", || {
        let t = ureq::get(&s.url("/metrics"))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        t.lines()
            .any(|l| l.starts_with("lua_tenant_throttled") && l.contains("tenant=\"greedy\""))
            .then_some(t)
    });
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("lua_tenant_throttled") && l.contains("tenant=\"modest\"")),
        "only the refused tenant is counted"
    );
}

// A tenant whose line of waiting executions is full gets 429 `queue_full` with Retry-After,
// not a 200 whose nodes were skipped; another tenant still queues.
#[test]
fn a_full_tenant_line_is_429_queue_full() {
    let s = Server::start(&[
        ("LUAMETRICS_POOL_MAX_SIZE", "1"),
        ("LUAMETRICS_POOL_MAX_QUEUED_PER_TENANT", "1"),
        // Long enough for the test to see one running and one waiting on a loaded machine.
        ("LUAMETRICS_ENGINE_TIME_LIMIT_MS", "8000"),
        ("LUAMETRICS_POOL_WAIT_TIMEOUT_MS", "60000"),
        ("LUAMETRICS_SERVER_REQUEST_TIMEOUT_MS", "60000"),
        // The line is what is tested, not the engine-time budget.
        ("LUAMETRICS_POOL_TENANT_ENGINE_MS_PER_S", "0"),
    ]);
    // Threads hold the URL, not the server: a failing assertion drops (kills) it at once.
    let url = s.url("/v1/pipelines/t.spin/execute");
    let spin = |tenant: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            call(
                ureq::post(&url).set("Authorization", &format!("Bearer {EXEC}")),
                Some(json!({"tenant": tenant, "event": {}})),
            )
        })
    };
    // One runs, one waits; wait until the pool says so (a hang detector, not a timing check).
    let running = spin("flood");
    poll("one running", || {
        (get(&s, "/v1/pool", Some(ADMIN)).1["active"] == 1).then_some(())
    });
    let waiting = spin("flood");
    poll("one waiting", || {
        (get(&s, "/v1/pool", Some(ADMIN)).1["waiting"] == 1).then_some(())
    });
    let r = ureq::post(&s.url("/v1/pipelines/t.spin/execute"))
        .set("Authorization", &format!("Bearer {EXEC}"))
        .send_json(json!({"tenant": "flood", "event": {}}));
    let r = match r {
        Err(ureq::Error::Status(429, r)) => r,
        other => panic!("expected 429, got {other:?}"),
    };
    assert!(r.header("Retry-After").is_some());
    let body: Value = r.into_json().unwrap();
    assert_eq!(body["error"]["code"], "queue_full", "{body}");
    let other = spin("calm");
    for t in [running, waiting, other] {
        let (st, o) = t.join().unwrap();
        assert_eq!(st, 200, "{o}");
        assert_eq!(o["nodes"][0]["status"], "timeout", "{o}");
    }
}

/// Reads until the peer closes the connection: the bytes it sent first, or `None` at the cap
/// (which only catches a hang).
fn read_until_closed(conn: &mut std::net::TcpStream) -> Option<usize> {
    use std::io::Read;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut total = 0;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Some(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(total),
            Err(_) => return None,
        }
    }
}

// Slow clients cannot hold the server: a connection that stops half-way through its request
// headers (or sends nothing) is closed after the header read timeout, and connections past the
// cap are closed at once, unanswered; the server answers again as soon as they are gone.
#[test]
fn half_sent_requests_are_closed_and_connections_are_capped() {
    use std::io::Write;
    let s = Server::start(&[
        ("LUAMETRICS_SERVER_HEADER_READ_TIMEOUT_MS", "2000"),
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS", "6"),
    ]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut partial: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
                .unwrap();
            c
        })
        .collect();
    let mut idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // The cap is full (6): one more is closed without an answer.
    let mut extra = std::net::TcpStream::connect(&addr).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        read_until_closed(&mut extra),
        Some(0),
        "a connection past the cap was served"
    );
    for c in partial.iter_mut().chain(idle.iter_mut()) {
        assert!(
            read_until_closed(c).is_some(),
            "a half-sent or idle connection was kept"
        );
    }
    let (status, _) = get(&s, "/healthz", None);
    assert_eq!(status, 200);
    s.stop();
}

// A client that closes its connection while the server still writes to it (pipelined requests
// whose answers it never reads) costs the server that connection only: SIGPIPE once killed the
// whole process, without a token and without a log line.
#[test]
fn a_client_closing_mid_answer_does_not_kill_the_server() {
    use std::io::Write;
    let mut s = Server::start(&[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let requests = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(50);
    for _ in 0..10 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(requests.as_bytes()).unwrap();
        // Closed with answers unread: the kernel resets the connection under the server.
        drop(c);
    }
    // Still serving (a hang detector's poll, not a timing check).
    let (status, _) = poll("the server to answer", || {
        let r = get(&s, "/healthz", None);
        (r.0 == 200).then_some(r)
    });
    assert_eq!(status, 200);
    assert!(s.child.try_wait().unwrap().is_none(), "the server died");
    s.stop();
}

/// One `GET /healthz` on a fresh connection: the bytes of its answer (0: closed unanswered).
fn raw_healthz(addr: &str) -> usize {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    read_until_closed(&mut c).unwrap_or(0)
}

/// A connection from a loopback address of our choice (all of 127/8 reaches the server).
fn connect_from(local: &str, addr: &str) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{local}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

// A few clients holding every place cannot shut a new one out (adversary round 7: 9 addresses
// x 128 connections, `/healthz` answered 6 times in 80): at the cap, a client holding fewer
// connections than the busiest takes the busiest one's oldest connection's place.
#[test]
fn clients_holding_every_place_make_room_for_a_new_one() {
    use std::io::Write;
    let s = Server::start(&[
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS", "8"),
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS_PER_PEER", "4"),
        ("LUAMETRICS_SERVER_HEADER_READ_TIMEOUT_MS", "600000"),
    ]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let healthz_from = |local: &str| {
        let mut c = connect_from(local, &addr);
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        read_until_closed(&mut c).unwrap_or(0)
    };
    // Two clients take every place with connections that never send a request.
    let mut held = Vec::new();
    for local in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..4 {
            held.push(connect_from(local, &addr));
        }
    }
    // Connections are accepted in the order they were made: the third client's comes after
    // all eight (without room made for it, it would be closed unanswered every time).
    poll(
        "a new client to be served while two hold every place",
        || (healthz_from("127.0.0.4") > 0).then_some(()),
    );
    drop(held);
    // Eight clients holding one idle connection each (adversary round 8: 12 addresses with
    // one each kept `/healthz` out entirely): a client holding none still gets in.
    let one_each: Vec<_> = (10..18)
        .map(|n| connect_from(&format!("127.0.0.{n}"), &addr))
        .collect();
    poll(
        "a new client to be served while eight hold one place each",
        || (healthz_from("127.0.0.20") > 0).then_some(()),
    );
    drop(one_each);
    s.stop();
}

// Room is made only from idle connections (adversary round 8: a stream of new addresses cut a
// host's requests in flight): at the cap, a request in flight is never closed to let a new
// client in.
#[test]
fn room_is_never_made_by_cutting_a_request_in_flight() {
    use std::io::{Read, Write};
    let s = Server::start(&[
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS", "8"),
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS_PER_PEER", "4"),
        ("LUAMETRICS_SERVER_HEADER_READ_TIMEOUT_MS", "600000"),
        ("LUAMETRICS_SERVER_REQUEST_TIMEOUT_MS", "600000"),
    ]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // A host with four requests in flight: each has asked to send its body
    // (`Expect: 100-continue`), and the server's `100 Continue` says the request is being
    // handled; the bodies are sent once the new clients are in.
    let body = r#"{"points":[{"name":"host.queue_depth","kind":"gauge","value":1}]}"#;
    let mut host: Vec<_> = (0..4)
        .map(|_| {
            let mut c = connect_from("127.0.0.3", &addr);
            write!(
                c,
                "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {EXEC}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            let mut head = [0u8; 25];
            c.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
            c
        })
        .collect();
    // Another client takes the other places with idle connections.
    let idle: Vec<_> = (0..4).map(|_| connect_from("127.0.0.2", &addr)).collect();
    // New clients get in by closing idle connections only.
    for n in 4..10 {
        let mut c = connect_from(&format!("127.0.0.{n}"), &addr);
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(
            read_until_closed(&mut c).unwrap_or(0) > 0,
            "client {n} was not served"
        );
    }
    // Every request in flight is answered once its body arrives.
    for c in &mut host {
        c.write_all(body.as_bytes()).unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head)
            .expect("a request in flight was cut to make room");
        assert_eq!(&head, b"HTTP/1.1 200");
    }
    drop(idle);
    s.stop();
}

// Requests that trickle their bodies cannot hold every place either (adversary round 11: 8
// addresses x 128 connections, each sending a `/login` body a byte a second and reconnecting
// after the request timeout, and `/healthz` answered 1 probe in 60): at the cap, when no
// connection is idle, one whose request has been receiving its body for over a second makes
// room.
#[test]
fn clients_trickling_bodies_make_room_for_a_new_one() {
    use std::io::{Read, Write};
    let s = Server::start(&[
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS", "8"),
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS_PER_PEER", "4"),
        ("LUAMETRICS_SERVER_REQUEST_TIMEOUT_MS", "600000"),
    ]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for local in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..4 {
            let mut c = connect_from(local, &addr);
            c.write_all(
                b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: 8000\r\n\r\n",
            )
            .unwrap();
            // In flight: the server asks for the body, which comes a byte at a time.
            c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            let mut head = [0u8; 25];
            c.read_exact(&mut head).unwrap();
            assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
            c.write_all(b"t").unwrap();
            held.push(c);
        }
    }
    poll(
        "a new client to be served while two trickle bodies on every place",
        || {
            let mut c = connect_from("127.0.0.4", &addr);
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            (read_until_closed(&mut c).unwrap_or(0) > 0).then_some(())
        },
    );
    drop(held);
    s.stop();
}

// Bodies in flight are bounded in memory, whatever the number of connections: each is charged
// 16 times its declared length (what it may hold once parsed), a request that would pass
// `max_inflight_body_bytes` is refused (`503 server_busy`, `Retry-After`) before its body is
// read, requests without a body are not held back, and the room comes back when the request
// holding it is answered.
#[test]
fn request_bodies_in_flight_are_bounded_in_bytes() {
    use std::io::{Read, Write};
    let s = Server::start(&[
        ("LUAMETRICS_SERVER_MAX_BODY_BYTES", "4096"),
        // 16 full-size bodies' bytes, one full-size body's parsed charge.
        ("LUAMETRICS_SERVER_MAX_INFLIGHT_BODY_BYTES", "65536"),
        ("LUAMETRICS_SERVER_REQUEST_TIMEOUT_MS", "600000"),
    ]);
    let addr = s.base.trim_start_matches("http://").to_string();
    let points = r#"{"points":[{"name":"host.queue_depth","kind":"gauge","value":1}]}"#;
    let post = |body_len: usize, expect: bool| {
        format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {EXEC}\r\nContent-Type: application/json\r\n{}Content-Length: {body_len}\r\nConnection: close\r\n\r\n",
            if expect { "Expect: 100-continue\r\n" } else { "" }
        )
    };
    let answer = |c: &mut std::net::TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        text
    };
    // Requests without the execute token take none of the budget: a body being trickled to
    // the open sign-in form (the server asked for it) leaves the whole budget to the others.
    let mut trickler = std::net::TcpStream::connect(&addr).unwrap();
    trickler
        .write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    trickler
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = [0u8; 25];
    trickler.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
    // A request declaring 4,000 bytes is being served (the server asked for its body): it is
    // charged 64,000 bytes, and the 1,536 left hold no other body (a budget of raw bytes would
    // have room for 15 more).
    let big = format!("{points:<4000}");
    let mut holder = std::net::TcpStream::connect(&addr).unwrap();
    holder.write_all(post(big.len(), true).as_bytes()).unwrap();
    holder
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = [0u8; 25];
    holder.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
    // Another body does not fit beside it: refused before it is read.
    let mut other = std::net::TcpStream::connect(&addr).unwrap();
    other
        .write_all(post(points.len(), false).as_bytes())
        .unwrap();
    other.write_all(points.as_bytes()).unwrap();
    let refused = answer(&mut other);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("server_busy"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    // A request without a body is not held back.
    assert!(
        raw_healthz(&addr) > 0,
        "/healthz was held back by the body budget"
    );
    // The holder is answered, and its room is free again.
    holder.write_all(big.as_bytes()).unwrap();
    let served = answer(&mut holder);
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    let mut again = std::net::TcpStream::connect(&addr).unwrap();
    again
        .write_all(post(points.len(), false).as_bytes())
        .unwrap();
    again.write_all(points.as_bytes()).unwrap();
    let served = answer(&mut again);
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");
    // Parsed, an object is a map node of ~650 bytes whatever its text: a body of small
    // objects is charged for them once read, and one that no wait could make room for is
    // refused outright (2 KB of `{}` would hold ~400 KB parsed).
    let dense = format!(r#"{{"points":[{}{{}}]}}"#, "{},".repeat(600));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(post(dense.len(), false).as_bytes()).unwrap();
    c.write_all(dense.as_bytes()).unwrap();
    let refused = answer(&mut c);
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains("objects and arrays"), "{refused}");
    // A few objects fit, and the request is served (here: refused as a bad batch).
    let sparse = format!(r#"{{"points":[{}{{}}]}}"#, "{},".repeat(20));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(post(sparse.len(), false).as_bytes()).unwrap();
    c.write_all(sparse.as_bytes()).unwrap();
    let served = answer(&mut c);
    assert!(served.starts_with("HTTP/1.1 400"), "{served}");
    drop(trickler);
    s.stop();
}

// One client cannot hold the server: it gets `max_connections_per_peer` connections however
// many places the cap has, and a connection whose client sends requests but never reads the
// answers is closed once its writes have waited `write_timeout_ms`, which frees its place.
#[test]
fn one_client_cannot_hold_every_connection_or_stall_its_answers() {
    use std::io::Write;
    let s = Server::start(&[
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS", "50"),
        ("LUAMETRICS_SERVER_MAX_CONNECTIONS_PER_PEER", "1"),
        ("LUAMETRICS_SERVER_WRITE_TIMEOUT_MS", "5000"),
    ]);
    let addr = s.base.trim_start_matches("http://").to_string();
    // 2,000 requests for a 28 KB answer, never read: far more than the socket buffers hold.
    let mut greedy = std::net::TcpStream::connect(&addr).unwrap();
    let requests = "GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000);
    greedy.write_all(requests.as_bytes()).unwrap();
    // Its one place taken (the write timeout is far off), this address gets no other.
    assert_eq!(
        raw_healthz(&addr),
        0,
        "a second connection from one peer was served"
    );
    // While it holds this address's one place, another connection from it is closed unanswered
    // (or, if its writes already timed out, answered): polled until answered, which only the
    // write timeout can bring about (a hang detector's poll, not a timing check).
    poll("the stalled connection to be closed", || {
        (raw_healthz(&addr) > 0).then_some(())
    });
    drop(greedy);
    s.stop();
}
