//! Fleet scale on EC2 against moto: quotas and throttling waited out, the spend cap and
//! `build --plan`. moto's machines never
//! answer SSH, so every launched target fails in boot after its (short) boot timeout; what
//! these tests look at is which machines were launched at all, through the EC2 API.

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/moto.rs"]
mod moto;

use common::*;
use moto::Moto;

/// Targets `cheap` (a $0.01/h builder) and `dear` (a $100/h one), one hour each at most.
fn priced_project(moto: &Moto, root_extra: &str) -> tempfile::TempDir {
    let builder = |price: &str| {
        moto.builder(&format!(
            "instance_types = [\"t3.micro\", \"c5.large\"]\nboot_timeout = \"3s\"\n{price}\n"
        ))
    };
    Project::new()
        .builder("cheap", &builder("hourly_price = 0.01"))
        .builder(
            "dear",
            &builder("hourly_price = { \"t3.micro\" = 1.0, \"c5.large\" = 100 }"),
        )
        .builder("unpriced", &builder(""))
        .file("build.sh", "#!/bin/sh\ntrue\n")
        .toml(&format!(
            "{root_extra}\n\
             [target.cheap]\nbuilder = \"cheap\"\nscript = \"build.sh\"\ntimeout = \"1h\"\n\
             [target.dear]\nbuilder = \"dear\"\nscript = \"build.sh\"\ntimeout = \"1h\"\n\
             [target.free]\nbuilder = \"unpriced\"\nscript = \"build.sh\"\ntimeout = \"1h\"\n"
        ))
        .done()
}

fn run(world: &World, moto: &Moto, args: &[&str]) -> std::process::Output {
    let mut c = world.cmd();
    moto.env(&mut c);
    run_shown(c, args)
}

/// The targets moto saw a machine launched for.
fn launched(moto: &Moto) -> Vec<String> {
    let mut t: Vec<String> = moto
        .instances()
        .into_iter()
        .filter_map(|i| i.tags.get("runner:target").cloned())
        .collect();
    t.sort();
    t
}

#[test]
fn the_plan_prices_every_machine_and_starts_nothing() {
    let moto = Moto::start(&[]);
    let proj = priced_project(&moto, "");
    let world = World::with_project(proj.path().to_owned());
    let out = run(
        &world,
        &moto,
        &["build", "cheap", "dear", "--plan", "--max-cost", "50"],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let line = |t: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{t} ")))
            .unwrap_or_else(|| panic!("no line for {t}:\n{text}"))
            .to_owned()
    };
    // The dearest type is the worst case: $100 × 1h.
    assert!(line("cheap").contains("$0.0100") && line("cheap").contains("yes"));
    let dear = line("dear");
    assert!(
        dear.contains("$100.0000") && dear.contains("no: spend cap"),
        "{dear}"
    );
    assert!(dear.contains("t3.micro or c5.large"), "{dear}");
    assert!(
        text.contains("1 machine(s) would launch, 1 skipped"),
        "{text}"
    );
    // The same plan as JSON, for CI to read.
    let out = run(
        &world,
        &moto,
        &[
            "--message-format",
            "json",
            "build",
            "--all",
            "--plan",
            "--max-cost",
            "150",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "an unpriced builder under a cap"
    );
    assert!(stderr(&out).contains("builders/unpriced.toml` gives no hourly_price"));
    let out = run(
        &world,
        &moto,
        &["--message-format", "json", "build", "--all", "--plan"],
    );
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(plan["launched"], 3, "{plan}");
    assert!(
        (plan["worst_cost"].as_f64().unwrap() - 100.01).abs() < 1e-6,
        "{plan}"
    );
    assert_eq!(plan["instance_hours"], 3.0, "{plan}");
    // Nothing was started, resolved or made.
    assert!(moto.instances().is_empty());
    assert!(moto.runner_groups().is_empty());
    world.assert_clean();
}

#[test]
fn a_spend_cap_skips_the_targets_past_it_and_launches_none_of_them() {
    let moto = Moto::start(&[]);
    let proj = priced_project(&moto, "[limits]\nmax_cost = 500\nmax_instance_hours = 10\n");
    let world = World::with_project(proj.path().to_owned());
    // The flag lowers the project's cap: `dear` ($100 at worst) no longer fits.
    let out = run(
        &world,
        &moto,
        &[
            "--message-format",
            "json",
            "build",
            "cheap",
            "dear",
            "--keep-going",
            "-j",
            "1",
            "--max-cost",
            "50",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let events = json_events(&out);
    let dear = finished(&events, "dear");
    assert_eq!(dear["outcome"], "skipped", "{dear}");
    assert_eq!(dear["failure"], "spend_cap", "{dear}");
    let why = dear["error"].as_str().unwrap();
    // `cheap` ran first (-j 1) and kept only its minimum minute.
    assert!(why.contains("would take the run to $100.0002"), "{why}");
    // `cheap` was launched (and, moto's machines being unreachable, failed in boot).
    assert_eq!(finished(&events, "cheap")["phase"], "boot");
    assert_eq!(launched(&moto), ["cheap"]);
    assert!(moto.live_instances().is_empty());
    world.assert_clean();

    // Instance-hours cap every cloud machine, priced or not: 10 h fits; 0.5 h fits none.
    let proj = priced_project(&moto, "[limits]\nmax_instance_hours = 0.5\n");
    let world = World::with_project(proj.path().to_owned());
    let out = run(&world, &moto, &["build", "free"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("max_instance_hours 0.5"),
        "{}",
        stderr(&out)
    );
    assert_eq!(launched(&moto), ["cheap"]);
    world.assert_clean();
}

#[test]
fn prices_and_caps_are_checked_like_every_other_value() {
    let moto = Moto::start(&[]);
    let world = World::new();
    let bad = |builder_extra: &str, root: &str| {
        let proj = Project::new()
            .builder(
                "b",
                &moto.builder(&format!(
                    "instance_types = [\"t3.micro\"]\n{builder_extra}\n"
                )),
            )
            .file("build.sh", "#!/bin/sh\ntrue\n")
            .toml(&format!(
                "{root}\n[target.t]\nbuilder = \"b\"\nscript = \"build.sh\"\n"
            ))
            .done();
        let w = World::with_project(proj.path().to_owned());
        let out = run(&w, &moto, &["build", "t", "--plan"]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        stderr(&out)
    };
    let e = bad("hourly_price = { \"m5.large\" = 1.0 }", "");
    assert!(e.contains("b.toml:") && e.contains("hourly_price"), "{e}");
    assert!(e.contains("`m5.large` is not one of instance_types"), "{e}");
    let e = bad("hourly_price = -1", "");
    assert!(e.contains("hourly_price") && e.contains("between 0"), "{e}");
    let e = bad("hourly_price = 1", "[limits]\nmax_cost = 0\n");
    assert!(e.contains("runner.toml:") && e.contains("max_cost"), "{e}");
    let out = world
        .cmd()
        .args(["build", "--max-cost", "nan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn quotas_and_throttling_are_waited_out_and_the_machine_then_launches() {
    let refusals = [
        "VcpuLimitExceeded",
        "RequestLimitExceeded",
        "InstanceLimitExceeded",
    ];
    let moto = Moto::refusing(&[], &refusals);
    let proj = Project::new()
        .builder(
            "b",
            &moto.builder("instance_types = [\"t3.micro\"]\nboot_timeout = \"3s\"\n"),
        )
        .file("build.sh", "#!/bin/sh\ntrue\n")
        .toml("[target.t]\nbuilder = \"b\"\nscript = \"build.sh\"\n")
        .done();
    let world = World::with_project(proj.path().to_owned());
    let mut c = world.cmd();
    moto.env(&mut c);
    // Throttling reaches runner's own wait, not only the SDK's retries.
    c.env("AWS_MAX_ATTEMPTS", "1");
    let out = run_shown(c, &["--message-format", "json", "build", "t"]);
    let events = json_events(&out);
    let waits: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "waiting").collect();
    assert_eq!(waits.len(), 3, "{events:?}");
    for (w, code) in waits.iter().zip(refusals) {
        assert_eq!(w["target"], "t");
        let reason = w["reason"].as_str().unwrap();
        assert_eq!(
            reason,
            format!("no room for any instance type: t3.micro: {code}")
        );
    }
    // Growing pauses between tries.
    let pauses: Vec<f64> = waits
        .iter()
        .map(|w| w["retry_in_seconds"].as_f64().unwrap())
        .collect();
    assert!(pauses.windows(2).all(|p| p[1] > p[0]), "{pauses:?}");
    // Then it launched: moto's machine is unreachable, so the target ends in boot, at SSH.
    let t = finished(&events, "t");
    assert!(
        t["error"].as_str().unwrap().contains("did not accept SSH"),
        "{t}"
    );
    assert_eq!(launched(&moto), ["t"]);
    assert!(moto.live_instances().is_empty() && moto.runner_groups().is_empty());
    world.assert_clean();
}
