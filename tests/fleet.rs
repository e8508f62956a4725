//! A fleet on one real libSQL server (`sqld`): several `luametrics serve` instances write the
//! same tenants into one database, with JWT auth on; stored totals equal the sum of what every
//! instance accepted, through concurrent retention runs, an outage of the server, a server
//! restarted with a key that refuses the instances' token, and a write lock held on the server.
//! Time caps here are hang detectors, never performance assertions.

mod common;

use common::proxy::LossyProxy;
use common::sqld::Sqld;
use common::*;
use std::process::Command;
use std::time::Duration;

/// User samples stored in the shared database, read straight from the server.
fn stored(url: &str, token: Option<&str>) -> u64 {
    server_i64(
        url,
        token,
        "SELECT COALESCE(SUM(samples), 0) FROM metrics WHERE metric_type = 'user'",
    ) as u64
}

/// The first column of every row `sql` returns, read straight from the server.
fn server_column(url: &str, token: Option<&str>, sql: &str) -> Vec<libsql::Value> {
    block(common::sqld::query_column(url, token, sql))
}

/// The one integer `sql` returns, read straight from the server.
fn server_i64(url: &str, token: Option<&str>, sql: &str) -> i64 {
    match server_column(url, token, sql).first() {
        Some(libsql::Value::Integer(n)) => *n,
        other => panic!("{sql} returned {other:?}"),
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn instance(sqld: &Sqld, name: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Server {
    instance_at(&sqld.url, name, token, extra)
}

fn instance_at(url: &str, name: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("LUAMETRICS_DATABASE_URL", url),
        ("LUAMETRICS_DATABASE_INSTANCE", name),
        ("LUAMETRICS_RECORDER_WINDOW_MS", "200"),
    ];
    if let Some(t) = token {
        env.push(("LUAMETRICS_DATABASE_AUTH_TOKEN", t));
    }
    env.extend_from_slice(extra);
    Server::start_capturing(&env)
}

fn logins(s: &Server, n: usize) {
    for i in 0..n {
        let (status, body) = login(s, &format!("t{}", i % 3), "pro");
        assert_eq!(status, 200, "{body}");
    }
}

/// The fleet's total of `logins.by_plan_count` over the last hour, as one instance answers it.
fn queried_logins(s: &Server) -> f64 {
    let (status, q) = get(
        s,
        "/v1/metrics/query?name=logins.by_plan_count&from=-2h&step=1h&agg=sum",
        Some(ADMIN),
    );
    assert_eq!(status, 200, "{q}");
    q["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["points"].as_array().unwrap().iter())
        .map(|p| p[1].as_f64().unwrap_or(0.0))
        .sum()
}

fn term_and_wait(s: &mut Server) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    for _ in 0..600 {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("serve did not exit within 60 s of SIGTERM");
}

#[test]
fn three_instances_on_one_server_store_exact_totals_and_see_each_other() {
    if !Sqld::available() {
        return;
    }
    let sqld = Sqld::start_with_auth();
    let token = sqld.token();
    let mut fleet: Vec<Server> = (0..3)
        .map(|i| instance(&sqld, &format!("node-{i}"), Some(&token), &[]))
        .collect();
    // Different loads per instance, the same tenants on all.
    std::thread::scope(|scope| {
        for (i, s) in fleet.iter().enumerate() {
            scope.spawn(move || logins(s, 20 + 10 * i));
        }
    });
    let total: u64 = fleet.iter().map(accepted).sum();
    assert!(total > 0);
    poll("every instance's points stored", || {
        (stored(&sqld.url, Some(&token)) == total).then_some(())
    });
    // Any instance answers for the whole fleet: 90 executions, one login count each.
    for s in &fleet {
        assert_eq!(queried_logins(s), 90.0, "as seen by {}", s.base);
    }
    // The dashboard of any instance draws the fleet's data.
    let page = ureq::get(&fleet[1].url("/?range=1h"))
        .set("Authorization", &format!("Bearer {ADMIN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(page.contains("logins.by_plan_count"), "{page}");
    // A tenant token minted on one instance opens that tenant's data on another.
    let (status, minted) = post(
        &fleet[0],
        "/v1/tenants/t1/tokens",
        Some(ADMIN),
        serde_json::json!({}),
    );
    assert_eq!(status, 201, "{minted}");
    let tenant_token = minted["token"].as_str().unwrap().to_string();
    let usage = poll("the minted token known to another instance", || {
        let (status, u) = get(&fleet[2], "/v1/tenant/usage?from=-1h", Some(&tenant_token));
        (status == 200).then_some(u)
    });
    assert!(
        usage["range"]["points"]["accepted"].as_u64().unwrap() > 0,
        "{usage}"
    );
    // Every instance wrote rows of its own.
    let writers: Vec<String> = server_column(
        &sqld.url,
        Some(&token),
        "SELECT instance FROM metrics GROUP BY instance ORDER BY instance",
    )
    .into_iter()
    .map(|v| match v {
        libsql::Value::Text(t) => t,
        other => panic!("instance {other:?}"),
    })
    .collect();
    assert_eq!(writers, ["node-0", "node-1", "node-2"]);

    // Retention (rollup first) on all three at once, twice: rollups equal the raw totals.
    for _ in 0..2 {
        let runs: Vec<_> = fleet
            .iter()
            .map(|s| {
                Command::new(env!("CARGO_BIN_EXE_luametrics"))
                    .arg("retention")
                    .current_dir(s.dir.path())
                    .env("LUAMETRICS_DATABASE_URL", &sqld.url)
                    .env("LUAMETRICS_DATABASE_AUTH_TOKEN", &token)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for run in runs {
            let out = run.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "retention failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let raw = server_i64(
        &sqld.url,
        Some(&token),
        "SELECT SUM(samples) FROM metrics WHERE metric_type = 'user'",
    );
    let hourly = server_i64(
        &sqld.url,
        Some(&token),
        "SELECT SUM(samples) FROM metric_rollups WHERE metric_type = 'user' AND resolution = 'hour' AND scope = 'series'",
    );
    assert_eq!(raw as u64, total);
    assert_eq!(hourly, raw, "concurrent rollups must count every row once");

    for s in fleet.iter_mut() {
        assert!(term_and_wait(s).success());
    }
    assert_eq!(stored(&sqld.url, Some(&token)), total);
}

#[test]
fn twenty_seconds_without_the_server_lose_nothing_within_the_bound() {
    if !Sqld::available() {
        return;
    }
    let mut sqld = Sqld::start();
    let mut s = instance(&sqld, "node-a", None, &[]);
    logins(&s, 10);
    let first = accepted(&s);
    poll("the first points stored", || {
        (stored(&sqld.url, None) == first).then_some(())
    });
    sqld.stop();
    // Traffic goes on while the server is away; the instance says it is not ready.
    let outage = std::time::Instant::now();
    let mut sent = 0;
    while outage.elapsed() < Duration::from_secs(20) {
        logins(&s, 5);
        sent += 5;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sent > 0);
    let (status, body) = get(&s, "/readyz", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "flush_failing", "{body}");
    // The dashboard says the database did not answer; it does not pass that off as "no data".
    let page = ureq::get(&s.url(&format!("/?range=1h&token={ADMIN}")))
        .call()
        .expect("the dashboard answers during the outage")
        .into_string()
        .unwrap();
    assert!(page.contains("data-error=\"database\""), "{page}");
    assert_eq!(get(&s, "/healthz", None).0, 200);
    sqld.restart();
    logins(&s, 10);
    let total = accepted(&s);
    poll("the backlog written after the server came back", || {
        (stored(&sqld.url, None) == total).then_some(())
    });
    poll("ready again", || {
        (get(&s, "/readyz", None).0 == 200).then_some(())
    });
    assert!(term_and_wait(&mut s).success());
    assert_eq!(stored(&sqld.url, None), total);
}

#[test]
fn a_server_that_stops_accepting_the_token_makes_the_instance_unready_and_loses_nothing() {
    if !Sqld::available() {
        return;
    }
    let mut sqld = Sqld::start_with_auth();
    let key = sqld.key().unwrap();
    let token = sqld.token();
    let mut s = instance(&sqld, "node-a", Some(&token), &[]);
    logins(&s, 10);
    // The server comes back trusting another key: the instance's token is refused.
    sqld.restart_with_new_key();
    logins(&s, 10);
    let body = poll("/readyz naming the refused token", || {
        let (status, body) = get(&s, "/readyz", None);
        (status == 503 && body["error"]["code"] == "flush_failing").then_some(body)
    });
    let text = body.to_string();
    assert!(
        text.contains("401") || text.to_lowercase().contains("jwt"),
        "{text}"
    );
    // Fixed by the operator: the old key is trusted again and the backlog is written.
    sqld.restart_with_key(key);
    let total = accepted(&s);
    poll("the backlog written once the token is accepted", || {
        (stored(&sqld.url, Some(&token)) == total).then_some(())
    });
    assert!(term_and_wait(&mut s).success());
    assert_eq!(stored(&sqld.url, Some(&token)), total);
}

#[test]
fn a_write_lock_held_on_the_server_delays_flushes_not_requests() {
    if !Sqld::available() {
        return;
    }
    let sqld = Sqld::start();
    // Flushes give up on the server after 1 s: the one queued behind the lock is then in
    // doubt (the server commits it once the lock goes), and its retry must not store it twice.
    let mut s = instance(
        &sqld,
        "node-a",
        None,
        &[("LUAMETRICS_DATABASE_REMOTE_TIMEOUT_MS", "1000")],
    );
    logins(&s, 5);
    let first = accepted(&s);
    poll("the first points stored", || {
        (stored(&sqld.url, None) == first).then_some(())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Another client holds the server's write lock (an uncommitted write), like a slow
    // statement would.
    let db = rt
        .block_on(libsql::Builder::new_remote(sqld.url.clone(), String::new()).build())
        .unwrap();
    let conn = db.connect().unwrap();
    let tx = rt
        .block_on(conn.transaction_with_behavior(libsql::TransactionBehavior::Immediate))
        .unwrap();
    rt.block_on(tx.execute(
        "INSERT INTO rollup_state (key, value) VALUES ('held', 1)",
        (),
    ))
    .unwrap();
    // Requests answer while the lock is held (each within the agent's 10 s hang detector);
    // the flush cannot have written them.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    for i in 0..30 {
        let r = agent
            .post(&s.url("/v1/pipelines/user.login/execute"))
            .set("Authorization", &format!("Bearer {EXEC}"))
            .send_json(serde_json::json!({"tenant": format!("t{}", i % 3), "event": {"email": "a@example.com", "plan": "pro", "method": "passkey"}}))
            .expect("a request must not wait for the held lock");
        assert_eq!(r.status(), 200);
    }
    // A few flush windows (200 ms) later, the lock still held (about 1 s in all, well within
    // sqld's 5 s before it takes an idle transaction's lock back).
    std::thread::sleep(Duration::from_millis(600));
    let while_held = stored(&sqld.url, None);
    assert!(
        accepted(&s) > while_held,
        "points accepted during the lock are not stored yet"
    );
    // (The server may have ended the transaction itself by now.)
    let _ = rt.block_on(tx.rollback());
    let total = accepted(&s);
    poll("points written once the lock is gone", || {
        (stored(&sqld.url, None) >= total).then_some(())
    });
    assert!(term_and_wait(&mut s).success());
    assert_eq!(
        stored(&sqld.url, None),
        total,
        "every point stored exactly once"
    );
}

#[test]
fn writes_whose_answers_are_lost_are_stored_once() {
    if !Sqld::available() {
        return;
    }
    let sqld = Sqld::start();
    let proxy = LossyProxy::start(sqld.port());
    let mut s = instance_at(&proxy.url, "node-a", None, &[]);
    logins(&s, 5);
    let first = accepted(&s);
    poll("the first points stored", || {
        (stored(&sqld.url, None) == first).then_some(())
    });
    let traces_before = count(&sqld.url, "SELECT COUNT(*) FROM pipeline_traces");
    let batches_before = count(&sqld.url, "SELECT COUNT(*) FROM write_batches");
    // The server applies every write but its answers are lost: the instance cannot know
    // whether its flushes and trace batches committed, and retries them.
    proxy.lose_answers(true);
    logins(&s, 20);
    poll("a flush applied by the server but unanswered", || {
        let applied = count(&sqld.url, "SELECT COUNT(*) FROM write_batches") > batches_before;
        (applied && proxy.lost() > 0).then_some(())
    });
    poll("/readyz reporting the failing flush", || {
        let (status, body) = get(&s, "/readyz", None);
        (status == 503 && body["error"]["code"] == "flush_failing").then_some(())
    });
    proxy.lose_answers(false);
    let total = accepted(&s);
    poll("ready again with nothing left to write", || {
        let (status, body) = get(&s, "/readyz", None);
        (status == 200 && body["backlog_rows"] == 0).then_some(())
    });
    assert!(term_and_wait(&mut s).success());
    assert_eq!(
        stored(&sqld.url, None),
        total,
        "every point stored exactly once"
    );
    // No window of a series (user or system) was written twice.
    assert_eq!(
        count(
            &sqld.url,
            "SELECT COUNT(*) FROM (SELECT 1 FROM metrics GROUP BY instance, metric_type, tenant_id, name, tags, timestamp HAVING COUNT(*) > 1)"
        ),
        0,
        "a series window stored twice"
    );
    assert_eq!(
        count(&sqld.url, "SELECT COUNT(*) FROM pipeline_traces") - traces_before,
        20,
        "every trace stored exactly once"
    );
}

fn count(url: &str, sql: &str) -> i64 {
    server_i64(url, None, sql)
}

/// A shutdown report's count of user points not written (0 when there is none).
fn user_points_lost(stderr: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.contains("shutdown deadline passed:"))
        .map(|line| {
            line.split(" user points")
                .next()
                .and_then(|l| l.rsplit('(').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("cannot read the user points in {line:?}"))
        })
        .unwrap_or(0)
}

#[test]
fn a_server_that_hangs_is_reported_and_holds_no_request() {
    hung_server(1_000, true);
}

#[test]
fn a_server_that_hangs_past_the_shutdown_deadline_does_not_hold_shutdown() {
    // Writes wait up to 90 s for an answer, longer than the test's 60 s wait for the exit:
    // only the shutdown deadline (3 s) can end the flush in flight.
    hung_server(90_000, false);
}

// Adversary round 24: `luametrics retention`, `query` and `names` opened the store without
// `database.remote_timeout_ms`: a server that never answered the rollup's statements held
// `retention` 30 s per lost answer, whatever was configured. They now open it as the runtime
// does. (A hang detector, not a timing: the bound is 500 ms, the detector 20 s.)
#[test]
fn the_clis_own_commands_keep_the_remote_bound() {
    if !Sqld::available() {
        return;
    }
    let sqld = Sqld::start();
    let proxy = LossyProxy::start(sqld.port());
    let dir = tempfile::tempdir().unwrap();
    let retention = || {
        Command::new(env!("CARGO_BIN_EXE_luametrics"))
            .arg("retention")
            .current_dir(dir.path())
            .env("LUAMETRICS_DATABASE_URL", &proxy.url)
            .env("LUAMETRICS_DATABASE_AUTH_TOKEN", "unused")
            .env("LUAMETRICS_DATABASE_REMOTE_TIMEOUT_MS", "500")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The schema first, answered.
    let out = retention().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.hang_on("rollup");
    let mut run = retention();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = run.kill();
            panic!("`luametrics retention` was held past its 500 ms bound");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("500 ms"), "{stderr}");
}

/// An instance whose server starts accepting requests and never answering them (the proxy
/// swallows them: nothing is applied). Requests go on; with `unready`, `/readyz` names the
/// unanswered writes; SIGTERM ends the process by its deadline with exit 3, and what it
/// accepted = what is stored + what it reported lost.
fn hung_server(remote_timeout_ms: u64, unready: bool) {
    if !Sqld::available() {
        return;
    }
    let sqld = Sqld::start();
    let proxy = LossyProxy::start(sqld.port());
    let timeout = remote_timeout_ms.to_string();
    let mut s = instance_at(
        &proxy.url,
        "node-a",
        None,
        &[
            ("LUAMETRICS_DATABASE_REMOTE_TIMEOUT_MS", timeout.as_str()),
            ("LUAMETRICS_RECORDER_SHUTDOWN_TIMEOUT_MS", "3000"),
        ],
    );
    logins(&s, 5);
    let first = accepted(&s);
    poll("the first points stored", || {
        (stored(&sqld.url, None) == first).then_some(())
    });
    proxy.hang(true);
    logins(&s, 20);
    if unready {
        let body = poll("/readyz naming the unanswered writes", || {
            let (status, body) = get(&s, "/readyz", None);
            (status == 503 && body["error"]["code"] == "flush_failing").then_some(body)
        });
        assert!(body.to_string().contains("no answer within"), "{body}");
    } else {
        // A flush is in flight, unanswered.
        poll("a backlog behind the unanswered flush", || {
            let (_, body) = get(&s, "/readyz", None);
            let rows = body["backlog_rows"]
                .as_u64()
                .or_else(|| body["error"]["details"]["health"]["backlog_rows"].as_u64());
            (rows.unwrap_or(0) > 0).then_some(())
        });
    }
    assert_eq!(get(&s, "/healthz", None).0, 200);
    let total = accepted(&s);
    let status = term_and_wait(&mut s);
    assert_eq!(status.code(), Some(3), "unwritten points must give exit 3");
    let err = s.stderr.lock().unwrap().clone();
    let lost = user_points_lost(&err);
    assert!(lost > 0, "{err}");
    assert_eq!(stored(&sqld.url, None) + lost, total, "{err}");
}
