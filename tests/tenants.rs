//! Tenant-scoped read access over the real server: a minted tenant token reads its own
//! metrics, names, traces and usage and nothing of another tenant on any route; it survives a
//! restart and dies when revoked; overflow and rate limits show up in the tenant's usage with
//! the metric names involved.

mod common;
use common::*;
use serde_json::{json, Value};

fn call_as(method: &str, s: &Server, path: &str, token: &str) -> (u16, Value) {
    let r = ureq::request(method, &s.url(path)).set("Authorization", &format!("Bearer {token}"));
    call(
        r,
        if method == "POST" {
            Some(json!({}))
        } else {
            None
        },
    )
}

fn mint(s: &Server, tenant: &str) -> String {
    let (st, body) = call_as("POST", s, &format!("/v1/tenants/{tenant}/tokens"), ADMIN);
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["tenant"], tenant);
    body["token"].as_str().unwrap().to_string()
}

fn code(r: &(u16, Value)) -> (u16, String) {
    (r.0, r.1["error"]["code"].as_str().unwrap_or("").to_string())
}

#[test]
fn a_tenant_token_sees_its_own_tenant_on_every_route_and_nothing_else() {
    let s = Server::start(&[]);
    let acme = mint(&s, "acme");
    let globex = mint(&s, "globex");
    assert_ne!(acme, globex);
    let (_, a) = login(&s, "acme", "pro");
    let (_, g) = login(&s, "globex", "free");
    let (a_trace, g_trace) = (
        a["trace_id"].as_str().unwrap().to_string(),
        g["trace_id"].as_str().unwrap().to_string(),
    );
    // Wait for both tenants' metrics and traces to be written.
    poll("both tenants' rows", || {
        let (_, q) = get(
            &s,
            "/v1/metrics/query?name=logins.by_plan_count&group_by=tenant&from=-1h",
            Some(ADMIN),
        );
        let n = q["series"].as_array().map_or(0, Vec::len);
        let (st_a, _) = get(&s, &format!("/v1/traces/{a_trace}"), Some(ADMIN));
        let (st_g, _) = get(&s, &format!("/v1/traces/{g_trace}"), Some(ADMIN));
        (n == 2 && st_a == 200 && st_g == 200).then_some(())
    });

    // Routes a tenant token may not use at all.
    let forbidden = (403, "forbidden".to_string());
    assert_eq!(
        code(&call_as(
            "POST",
            &s,
            "/v1/pipelines/user.login/execute",
            &acme
        )),
        forbidden
    );
    assert_eq!(code(&call_as("POST", &s, "/v1/metrics", &acme)), forbidden);
    assert_eq!(code(&call_as("GET", &s, "/v1/pool", &acme)), forbidden);
    // The Prometheus exposition carries every tenant's labels: the operator's only.
    assert_eq!(code(&call_as("GET", &s, "/metrics", &acme)), forbidden);
    assert_eq!(
        code(&call_as("POST", &s, "/v1/tenants/acme/tokens", &acme)),
        forbidden
    );
    assert_eq!(
        code(&call_as("DELETE", &s, "/v1/tenants/globex/tokens", &acme)),
        forbidden
    );

    // Names: its own user metrics, none of the host's.
    let (st, names) = get(&s, "/v1/metrics/names", Some(&acme));
    assert_eq!(st, 200, "{names}");
    let names: Vec<&str> = names["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"logins.by_plan_count"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("lua.pool.")),
        "host metrics are not a tenant's: {names:?}"
    );

    // Query: scoped to acme, and asking for globex is refused.
    let (st, q) = get(
        &s,
        "/v1/metrics/query?name=logins.by_plan_count&group_by=tenant&from=-1h",
        Some(&acme),
    );
    assert_eq!(st, 200, "{q}");
    let groups: Vec<&str> = q["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["group"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(groups, ["acme"], "{q}");
    let other = get(
        &s,
        "/v1/metrics/query?name=logins.by_plan_count&tenant=globex",
        Some(&acme),
    );
    assert_eq!(code(&other), forbidden);

    // Traces: only its own; another tenant's trace is unknown.
    let (st, list) = get(&s, "/v1/traces?limit=50", Some(&acme));
    assert_eq!(st, 200);
    let tenants: Vec<&str> = list["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| *t == "acme"),
        "{tenants:?}"
    );
    assert_eq!(
        code(&get(&s, "/v1/traces?tenant=globex", Some(&acme))),
        forbidden
    );
    assert_eq!(
        get(&s, &format!("/v1/traces/{a_trace}"), Some(&acme)).0,
        200
    );
    assert_eq!(
        code(&get(&s, &format!("/v1/traces/{g_trace}"), Some(&acme))),
        (404, "unknown_trace".to_string())
    );

    // Usage: its own, with engine time; another tenant's is refused.
    let (st, u) = get(&s, "/v1/tenant/usage", Some(&acme));
    assert_eq!(st, 200, "{u}");
    assert_eq!(u["tenant"], "acme");
    assert!(u["since_start"]["accepted"].as_u64().unwrap() >= 1, "{u}");
    assert!(u["engine"]["used_ms"].as_f64().unwrap() > 0.0, "{u}");
    assert!(u["series"]["active"].as_u64().unwrap() >= 1, "{u}");
    // The widest range there is answers as one bucket (its width overflowed i64: a 400 in a
    // release build, a panic in a debug one; adversary round 7).
    let (st, wide) = get(
        &s,
        "/v1/tenant/usage?from=-9223372036854775807&to=9223372036854775807",
        Some(&acme),
    );
    assert_eq!(st, 200, "{wide}");
    assert_eq!(
        code(&get(&s, "/v1/tenant/usage?tenant=globex", Some(&acme))),
        forbidden
    );
    // The admin names the tenant.
    let (st, ug) = get(&s, "/v1/tenant/usage?tenant=globex", Some(ADMIN));
    assert_eq!((st, ug["tenant"].as_str()), (200, Some("globex")), "{ug}");
    assert_eq!(
        code(&get(&s, "/v1/tenant/usage", Some(ADMIN))),
        (400, "invalid_query".to_string())
    );
    // The execute token reads nothing.
    assert_eq!(code(&get(&s, "/v1/metrics/names", Some(EXEC))), forbidden);

    // The dashboard: the tenant's own view, no host panel, no other tenant.
    let html = ureq::get(&s.url("/?range=1h"))
        .set("Authorization", &format!("Bearer {acme}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        html.contains("id=\"panel-usage\"") && html.contains("id=\"panel-user\""),
        "{html}"
    );
    assert!(html.contains("logins.by_plan_count"));
    assert!(
        !html.contains("id=\"panel-system\"") && !html.contains("globex"),
        "{html}"
    );
}

#[test]
fn minted_tokens_survive_a_restart_and_die_when_revoked() {
    let s = Server::start(&[]);
    let token = mint(&s, "acme");
    assert_eq!(get(&s, "/v1/tenant/usage", Some(&token)).0, 200);
    let s = Server::start_in(s.stop(), &[], false);
    assert_eq!(
        get(&s, "/v1/tenant/usage", Some(&token)).0,
        200,
        "kept across a restart"
    );
    let (st, r) = call_as("DELETE", &s, "/v1/tenants/acme/tokens", ADMIN);
    assert_eq!((st, r["revoked"].as_u64()), (200, Some(1)), "{r}");
    assert_eq!(
        code(&get(&s, "/v1/tenant/usage", Some(&token))),
        (401, "invalid_token".to_string())
    );
    let s = Server::start_in(s.stop(), &[], false);
    assert_eq!(
        get(&s, "/v1/tenant/usage", Some(&token)).0,
        401,
        "revoked for good"
    );
}

// Points folded into overflow series and points refused by the rate limit are visible to the
// tenant that caused them, with the metric names involved.
#[test]
fn overflow_and_rate_limits_show_in_the_tenants_usage_with_metric_names() {
    let s = Server::start(&[
        ("LUAMETRICS_LIMITS_MAX_SERIES_PER_TENANT", "1"),
        ("LUAMETRICS_LIMITS_POINTS_PER_MINUTE", "4"),
        ("LUAMETRICS_LIMITS_BURST", "4"),
    ]);
    let token = mint(&s, "noisy");
    for plan in ["pro", "free", "team", "enterprise", "trial", "edu"] {
        assert_eq!(login(&s, "noisy", plan).0, 200);
    }
    let (st, u) = get(&s, "/v1/tenant/usage", Some(&token));
    assert_eq!(st, 200, "{u}");
    let since = &u["since_start"];
    assert!(since["overflowed"].as_u64().unwrap() >= 1, "{u}");
    assert!(
        since["rejected"]["rate_limited"].as_u64().unwrap() >= 1,
        "{u}"
    );
    let troubles = since["metrics"].as_array().unwrap();
    let has = |reason: &str| {
        troubles
            .iter()
            .any(|m| m["reason"] == reason && m["metric"].as_str().unwrap().starts_with("logins."))
    };
    assert!(has("overflow"), "{u}");
    assert!(has("rate_limited"), "{u}");
    // The same counts reach the store under the tenant, readable over a range.
    let range = poll("the tenant's stored point counts", || {
        let (_, u) = get(&s, "/v1/tenant/usage?from=-1h", Some(&token));
        let r = u["range"]["points"].clone();
        (r["rejected"]["rate_limited"].as_u64().unwrap_or(0)
            == since["rejected"]["rate_limited"].as_u64().unwrap())
        .then_some(r)
    });
    assert_eq!(range["accepted"], since["accepted"], "{range}");
}

// Two instances on one database: a token minted on one works on the other, and a revocation
// on one reaches the other (each reloads the minted tokens every few seconds).
#[test]
fn tokens_minted_or_revoked_on_one_instance_reach_another() {
    let a = Server::start(&[]);
    let db = a.dir.path().join("m.db");
    let b = Server::start(&[("LUAMETRICS_DATABASE_URL", db.to_str().unwrap())]);
    let token = mint(&a, "acme");
    poll("the token on the other instance", || {
        (get(&b, "/v1/tenant/usage", Some(&token)).0 == 200).then_some(())
    });
    let (st, _) = call_as("DELETE", &a, "/v1/tenants/acme/tokens", ADMIN);
    assert_eq!(st, 200);
    assert_eq!(get(&a, "/v1/tenant/usage", Some(&token)).0, 401);
    poll("the revocation on the other instance", || {
        (get(&b, "/v1/tenant/usage", Some(&token)).0 == 401).then_some(())
    });
}
