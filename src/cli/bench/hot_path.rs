//! `luametrics bench hot-path`: targets 1-3 and 6 of docs/targets.md as ratios, each subject next
//! to its baseline in alternating rounds.

use super::*;

fn loop_script(body: &str, n: usize) -> Script {
    Script::new(
        "loop.lua",
        format!("local xs = {{ 'x0', 'x1', 'x2', 'x3' }}\nlocal agg = {{}}\nlocal m = helpers.metrics\nfor i = 1, {n} do\n  local x = xs[i % 4 + 1]\n  {body}\nend\nreturn 1"),
    )
}

use super::counting::{counting_sink, CountingSink};

/// The one engine configuration of every side (held, pooled, fresh, owned).
fn bench_settings() -> EngineSettings {
    EngineSettings {
        time_limit_ms: 60_000,
        ..EngineSettings::default()
    }
}

/// What the pooled sides hand the pool: the same script, event and context as the held
/// side's, owned behind `Arc`s as a host that builds each event hands it over (and as a
/// pipeline's nodes share theirs). `EnginePool::execute` takes them by reference and so
/// deep-copies both for the thread that runs them: a cost of that convenience, not of the pool.
fn shared_job(script: &Script) -> Job {
    Job {
        script: script.clone(),
        tenant: Arc::from("bench"),
        event: Arc::new(event()),
        context: Arc::new(json!({})),
        time_limit_ms: None,
    }
}

fn engine(sink: &Arc<CountingSink>) -> Engine {
    Engine::new(Arc::new(bench_settings()), sink.clone()).expect("engine starts")
}

/// Fails the command when the executions measured did not all record their points: a side
/// that silently did nothing must not pass as fast.
fn check_points(what: &str, sink: &CountingSink, expected: u64) -> Result<(), CliError> {
    let got = sink.accepted.load(Relaxed);
    if got == expected && expected > 0 {
        return Ok(());
    }
    Err(CliError::Arg {
        arg: "bench hot-path",
        problem: format!("{what}: the executions recorded {got} points, expected {expected}"),
    })
}

/// Executions per second of 2 threads each owning an engine: engines built and warmed, and
/// both threads started and parked on a barrier, before the clock starts.
fn owned_throughput(script: &Script, total: usize) -> Result<f64, CliError> {
    let sink = counting_sink();
    let engines: Vec<Engine> = (0..2)
        .map(|_| {
            let mut e = engine(&sink);
            e.execute(script, "bench", &event(), &json!({}));
            e
        })
        .collect();
    let start = std::sync::Barrier::new(3);
    let ok = AtomicU64::new(0);
    let t = std::thread::scope(|s| {
        for mut e in engines {
            let (start, ok) = (&start, &ok);
            s.spawn(move || {
                let (ev, cx) = (event(), json!({}));
                start.wait();
                let mut n = 0;
                for _ in 0..total / 2 {
                    n += u64::from(e.execute(script, "bench", &ev, &cx).result.is_ok());
                }
                ok.fetch_add(n, Relaxed);
            });
        }
        start.wait();
        // Leaving the scope joins both threads.
        Instant::now()
    });
    let elapsed = t.elapsed().as_secs_f64();
    check_points("3. owned engines", &sink, 2 + ok.load(Relaxed))?;
    Ok(ok.load(Relaxed) as f64 / elapsed)
}

/// Executions per second of 64 tasks on a pool of 2 with 2 worker threads: runtime and pool
/// built, both engines warmed, and the 64 tasks spawned and parked on a barrier, before the
/// clock starts. On a thread of its own: a runtime cannot be dropped inside another one.
fn pooled_throughput(script: &Script, total: usize) -> Result<f64, CliError> {
    let script = script.clone();
    std::thread::spawn(move || -> Result<f64, CliError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| CliError::Arg {
                arg: "bench hot-path",
                problem: format!("cannot start a 2-worker runtime: {e}"),
            })?;
        let sink = counting_sink();
        let pool_sink: Arc<dyn MetricsSink> = sink.clone();
        let ok = rt.block_on(async move {
            let pool = Arc::new(EnginePool::new(
                bench_settings(),
                PoolSettings {
                    // One tenant saturates the pool on purpose: no engine-time budget.
                    tenant_engine_ms_per_s: 0.0,
                    max_size: 2,
                    ..PoolSettings::default()
                },
                pool_sink,
            )?);
            {
                let (mut a, mut b) = (pool.checkout().await?, pool.checkout().await?);
                a.execute(&script, "bench", &event(), &json!({}));
                b.execute(&script, "bench", &event(), &json!({}));
            }
            let tasks = 64;
            let start = Arc::new(tokio::sync::Barrier::new(tasks + 1));
            let mut hs = Vec::new();
            for _ in 0..tasks {
                let (pool, script, start) = (pool.clone(), script.clone(), start.clone());
                // Each task counts its own executions: a shared counter would be contended,
                // which the owned side's is not.
                hs.push(tokio::spawn(async move {
                    let job = shared_job(&script);
                    start.wait().await;
                    let mut n = 0u64;
                    for _ in 0..total / tasks {
                        if let Ok(ex) = pool.run(job.clone()).await {
                            n += u64::from(ex.result.is_ok());
                        }
                    }
                    n
                }));
            }
            start.wait().await;
            let t = Instant::now();
            let mut ok = 0;
            for h in hs {
                ok += h.await.unwrap_or(0);
            }
            Ok::<_, CliError>((ok, t.elapsed().as_secs_f64()))
        })?;
        check_points("3. pooled engines", &sink, 2 + ok.0)?;
        Ok(ok.0 as f64 / ok.1)
    })
    .join()
    .map_err(|_| CliError::Arg {
        arg: "bench hot-path",
        problem: "the pooled side's thread panicked".into(),
    })?
}

pub(crate) async fn hot_path(rounds: usize) -> Result<ExitCode, CliError> {
    if rounds == 0 {
        return Err(CliError::Arg {
            arg: "--rounds",
            problem: "at least 1".into(),
        });
    }
    // Preflight: if an engine cannot be built here, say so instead of measuring; the
    // measurement loops below then build engines with `expect` on a path known to work.
    let preflight: Arc<dyn MetricsSink> = counting_sink();
    Engine::new(Arc::new(bench_settings()), preflight).map_err(|e| CliError::Arg {
        arg: "bench hot-path",
        problem: format!("cannot build a Lua engine: {e}"),
    })?;
    let mut rows: Vec<Row> = Vec::new();

    // Target 1: helpers.metrics vs the pure-Lua aggregation loop on one engine; each round
    // runs the four scripts once, the first one rotating.
    let n = 10_000;
    let reps = 5;
    let sink = counting_sink();
    let mut e = engine(&sink);
    let ev = json!({});
    let cases = [
        ("baseline", "local tags = { a = x, b = 'y' } local k = 'invoice.processed_count' .. '|' .. tags.a .. '|' .. tags.b agg[k] = (agg[k] or 0) + 1"),
        ("count", "m.count('invoice.processed_count', 1, { a = x, b = 'y' })"),
        ("gauge", "m.gauge('queue.depth', i, { a = x, b = 'y' })"),
        ("histogram", "m.histogram('invoice.amount', i, { a = x, b = 'y' })"),
    ];
    let scripts: Vec<Script> = cases.iter().map(|(_, b)| loop_script(b, n)).collect();
    for s in &scripts {
        e.execute(s, "bench", &ev, &ev);
    }
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for r in 0..rounds {
        for k in 0..cases.len() {
            let i = (r + k) % cases.len();
            let t = Instant::now();
            for _ in 0..reps {
                e.execute(&scripts[i], "bench", &ev, &ev);
            }
            ns[i].push(t.elapsed().as_nanos() as f64 / (reps * n) as f64);
        }
    }
    // Every helper call of every execution (warm-up included) landed in the sink.
    check_points(
        "1. helpers.metrics",
        &sink,
        (3 * n * (1 + reps * rounds)) as u64,
    )?;
    for (i, (name, _)) in cases.iter().enumerate().skip(1) {
        rows.push(Row {
            name: format!("1. helpers.metrics.{name} in a loop (ns/call)"),
            baseline: ns[0].clone(),
            subject: ns[i].clone(),
            goal: Goal::AtMost(1.5),
        });
    }

    // Target 2: held engine, pool of 1, fresh sandboxed state per execution; each round runs
    // the three once, the first one rotating.
    let script = Script::new("twenty_lines.lua", TWENTY_LINES);
    let ev = event();
    let cx = json!({});
    let (reps, fresh_reps) = (2_000, 200);
    let (held_sink, pool_sink, fresh_sink) = (counting_sink(), counting_sink(), counting_sink());
    let mut held = engine(&held_sink);
    held.execute(&script, "bench", &ev, &cx);
    let pool = EnginePool::new(
        bench_settings(),
        PoolSettings {
            // One tenant saturates the pool on purpose: no engine-time budget.
            tenant_engine_ms_per_s: 0.0,
            max_size: 1,
            ..PoolSettings::default()
        },
        pool_sink.clone(),
    )?;
    let job = shared_job(&script);
    pool.run(job.clone()).await?;
    let fresh_settings = Arc::new(bench_settings());
    let fresh_dyn: Arc<dyn MetricsSink> = fresh_sink.clone();
    let mut us: [Vec<f64>; 3] = Default::default();
    for r in 0..rounds {
        for k in 0..3 {
            let i = (r + k) % 3;
            let t = Instant::now();
            let count = match i {
                0 => {
                    for _ in 0..reps {
                        held.execute(&script, "bench", &ev, &cx);
                    }
                    reps
                }
                1 => {
                    for _ in 0..reps {
                        pool.run(job.clone()).await?;
                    }
                    reps
                }
                _ => {
                    for _ in 0..fresh_reps {
                        let mut e = Engine::new(fresh_settings.clone(), fresh_dyn.clone())
                            .expect("engine starts");
                        e.execute(&script, "bench", &ev, &cx);
                    }
                    fresh_reps
                }
            };
            us[i].push(t.elapsed().as_secs_f64() * 1e6 / count as f64);
        }
    }
    check_points("2. held engine", &held_sink, (1 + reps * rounds) as u64)?;
    check_points("2. pooled engine", &pool_sink, (1 + reps * rounds) as u64)?;
    check_points("2. fresh states", &fresh_sink, (fresh_reps * rounds) as u64)?;
    let [held_us, pooled_us, fresh_us] = us;
    rows.push(Row {
        name: "2a. pooled 20-line execution vs held engine (us)".into(),
        baseline: held_us,
        subject: pooled_us.clone(),
        goal: Goal::AtMost(1.3),
    });
    rows.push(Row {
        name: "2b. fresh sandboxed state per execution vs pooled (us)".into(),
        baseline: pooled_us,
        subject: fresh_us,
        goal: Goal::AtLeast(10.0),
    });

    // Target 3: 64 tasks on a pool of 2 (2 workers) vs 2 threads owning an engine, in
    // alternating order from round to round.
    let total = 32_000;
    let (mut owned, mut pooled) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        if r % 2 == 0 {
            owned.push(owned_throughput(&script, total)?);
            pooled.push(pooled_throughput(&script, total)?);
        } else {
            pooled.push(pooled_throughput(&script, total)?);
            owned.push(owned_throughput(&script, total)?);
        }
    }
    rows.push(Row {
        name: "3. 64 tasks on a pool of 2 vs 2 owned engines (exec/s)".into(),
        baseline: owned,
        subject: pooled,
        goal: Goal::AtLeast(0.85),
    });

    // Target 6: an idle engine's Lua heap against 64 KiB (one measurement per round; it
    // varies little).
    let idle: Vec<f64> = (0..rounds)
        .map(|_| engine(&counting_sink()).used_memory() as f64)
        .collect();
    rows.push(Row {
        name: "6. idle engine Lua heap (bytes vs 64 KiB)".into(),
        baseline: vec![65_536.0; rounds],
        subject: idle,
        goal: Goal::AtMost(1.0),
    });

    Ok(report(
        "target (docs/targets.md)",
        "bench hot-path",
        &rows,
        rounds,
    ))
}
