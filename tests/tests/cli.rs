//! audiencectl itself, against a real engine on the real broker: each command family runs, its
//! text is read on the words that matter and its JSON is parsed; a closed pipe ends it quietly;
//! errors are one line that says what to do; instants are typed as people type them.

use audience_e2e::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn ctl_binary() -> PathBuf {
    let path = bin_dir().join("audiencectl");
    assert!(
        path.exists(),
        "{} is missing: `make test` builds it",
        path.display()
    );
    path
}

/// The CLI pointed at one engine. `RUST_BACKTRACE=1` is set on purpose: no error and no closed
/// pipe may print a backtrace even then.
struct Ctl {
    server: String,
    token: Option<String>,
}

impl Ctl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ctl_binary());
        c.args(args)
            .env("AUDIENCE_SERVER", &self.server)
            .env("RUST_BACKTRACE", "1")
            .env_remove("AUDIENCECTL_DEBUG")
            .env_remove("AUDIENCE_TOKEN");
        if let Some(token) = &self.token {
            c.env("AUDIENCE_TOKEN", token);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("audiencectl runs")
    }

    /// Standard output of a command that must succeed quietly.
    fn text(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "audiencectl {args:?} failed: {stderr}"
        );
        assert!(
            stdout.is_empty() || stdout.ends_with('\n'),
            "audiencectl {args:?}: the last line ends with a newline: {stdout:?}"
        );
        assert!(
            !stdout.contains("Some(") && !stdout.contains("NumberValue"),
            "audiencectl {args:?} prints debug output: {stdout}"
        );
        stdout
    }

    /// The JSON lines of `--output json`, each parsed.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut with = args.to_vec();
        with.extend(["--output", "json"]);
        self.text(&with)
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audiencectl {with:?}: {e} in {l}"))
            })
            .collect()
    }

    /// The one JSON object of `--output json`.
    fn json(&self, args: &[&str]) -> Value {
        let mut lines = self.json_lines(args);
        assert_eq!(
            lines.len(),
            1,
            "audiencectl {args:?}: one object: {lines:?}"
        );
        lines.remove(0)
    }

    /// Standard error of a command that must fail, checked to be one line of its own.
    fn error(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "audiencectl {args:?} should fail");
        assert_eq!(out.status.code(), Some(1), "audiencectl {args:?}: {stderr}");
        assert!(
            stderr.starts_with("audiencectl: ") && stderr.trim_end().lines().count() == 1,
            "audiencectl {args:?}: one line: {stderr}"
        );
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("panicked"),
            "{stderr}"
        );
        stderr
    }
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.contains('T') && s.ends_with('Z') && audience_state::time::parse_instant(s, 0).is_ok()
    })
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_family_speaks_text_and_json() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("cli");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "cli")?;
    let ch = engine.ready().await?;
    let ctl = Ctl {
        server: engine.grpc.clone(),
        token: engine.client.token.clone(),
    };
    let now = engine_now(&ch).await?;

    // Audiences: create from a file, list, get.
    let definition = json!({
        "name": "Gold viewers",
        "tags": ["cli"],
        "criteria": {"and": [
            {"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}},
            {"event": {"type": "custom_event", "name": "Viewed Item", "count": {"at_least": 2},
                       "time": {"within_last_days": 7}}}
        ]}
    });
    let file = write(dir.path(), "gold.json", &definition.to_string());
    let created = ctl.json(&["audience", "create", &file]);
    let id = created["id"].as_u64().expect("an id");
    assert_eq!(created["name"], "Gold viewers");
    // Active, or calculating for the moment its (empty) backfill takes.
    assert!(
        created["status"] == "active" || created["status"] == "calculating",
        "{created}"
    );
    assert!(
        is_rfc3339(&created["created_at"]) && created["revision"] == 1,
        "{created}"
    );
    let id_text = id.to_string();
    let listed = ctl.json_lines(&["audience", "list"]);
    assert!(listed
        .iter()
        .any(|a| a["id"] == id && a["tags"] == json!(["cli"])));
    assert!(ctl.text(&["audience", "list"]).contains("Gold viewers"));
    let got = ctl.json(&["audience", "get", &id_text]);
    assert_eq!(got["criteria"]["and"][0]["user_attribute"]["value"], "gold");

    // Produce through the CLI: ten gold users who viewed twice, and user 1034, bronze, once.
    let viewed = |minutes_ago: i64| {
        custom_event(
            "Viewed Item",
            "navigation",
            now - minutes_ago * 60_000,
            json!({}),
        )
    };
    let mut lines = Vec::new();
    for mpid in 2001..=2010i64 {
        let batch = sdk_batch(mpid, now, vec![viewed(30), viewed(20)]);
        lines.push(batch.to_string());
    }
    let mut bronze = sdk_batch(1034, now, vec![viewed(10)]);
    bronze["user_attributes"] = json!({"tier": "bronze", "age": 52});
    lines.push(bronze.to_string());
    let batches = write(dir.path(), "batches.jsonl", &(lines.join("\n") + "\n"));
    let produced = ctl.json_lines(&["produce", "--topic", &topics.events, &batches]);
    assert_eq!(produced.len(), 11, "{produced:?}");
    assert!(
        produced.iter().all(|p| p["offset"].is_i64()),
        "{produced:?}"
    );
    wait_processed(&ch, 11, Duration::from_secs(60)).await?;

    // Explain, in the definition's words.
    let explained = ctl.text(&["explain", "1034", &id_text]);
    for words in [
        "mpid 1034 is not a member of audience",
        r#"tier exact match "gold": the value is "bronze""#,
        r#"custom event "Viewed Item" at least 2 times in the last 7 days: counted 1, the next change at "#,
        "when an occurrence leaves the window",
    ] {
        assert!(explained.contains(words), "{words} in:\n{explained}");
    }
    let e = ctl.json(&["explain", "1034", &id_text]);
    assert_eq!(e["member"], false);
    assert!(is_rfc3339(&e["evaluated_at"]), "{e}");
    assert_eq!(
        e["root"]["children"][0]["detail"],
        r#"the value is "bronze""#
    );
    assert!(is_rfc3339(&e["root"]["children"][1]["next_change"]), "{e}");

    // Profile: values as JSON values, times as RFC 3339.
    let p = ctl.text(&["profile", "1034"]);
    assert!(p.contains(r#""bronze""#) && p.contains("52"), "{p}");
    assert!(!p.contains("52.0"), "{p}");
    let first_seen = p.lines().next().unwrap_or_default();
    assert!(first_seen.contains("first seen 20"), "{first_seen}");
    let pj = ctl.json(&["profile", "1034"]);
    assert_eq!(pj["user_attributes"]["tier"], "bronze");
    assert_eq!(pj["user_attributes"]["age"], 52);
    assert!(is_rfc3339(&pj["first_seen"]), "{pj}");
    assert!(
        pj["identities"].as_array().is_some_and(|ids| ids
            .iter()
            .any(|i| i["type"] == "email" && i["value"] == "u1034@example.com")),
        "{pj}"
    );

    // Members now, and as of instants typed every way.
    let members = ctl.text(&["members", &id_text]);
    assert_eq!(members.lines().count(), 10, "{members}");
    let mj = ctl.json_lines(&["members", &id_text]);
    assert!(mj
        .iter()
        .all(|m| m["audience_id"] == id && m["mpid"].is_i64()));
    assert_eq!(
        ctl.text(&["members", &id_text, "--as-of", "now"])
            .lines()
            .count(),
        10
    );
    let before = audience_state::time::format_instant(now - 3_600_000);
    for instant in [before.as_str(), "-1d"] {
        let earlier = ctl.text(&["members", &id_text, "--as-of", instant]);
        assert_eq!(earlier.lines().count(), 0, "as of {instant}: {earlier}");
    }
    let seconds = ctl.error(&["members", &id_text, "--as-of", "1796374800"]);
    assert!(seconds.contains("looks like seconds"), "{seconds}");
    let refused = ctl.error(&["members", &id_text, "--as-of", "yesterday"]);
    assert!(
        refused.contains("'yesterday'") && refused.contains("RFC 3339"),
        "{refused}"
    );

    // History.
    let h = ctl.text(&["history", "2001"]);
    assert!(
        h.contains("Gold viewers") && h.contains("entered 20"),
        "{h}"
    );
    assert!(h.contains("still a member"), "{h}");
    let hj = ctl.json_lines(&["history", "2001"]);
    assert_eq!(hj.len(), 1, "{hj:?}");
    assert!(
        is_rfc3339(&hj[0]["entered"]) && hj[0]["left"].is_null(),
        "{hj:?}"
    );

    // Deltas: everything retained, as JSON lines and as text.
    let deltas = ctl.json_lines(&["subscribe", "--audience", &id_text, "--limit", "10"]);
    assert_eq!(deltas.len(), 10, "{deltas:?}");
    assert!(
        deltas
            .iter()
            .all(|d| d["kind"] == "added" && is_rfc3339(&d["processing_time"])),
        "{deltas:?}"
    );
    let first = ctl.text(&["subscribe", "--audience", &id_text, "--limit", "1"]);
    assert!(
        first.starts_with("+ added") && first.contains(" at 20"),
        "{first}"
    );

    // Figures and operations.
    let stats = ctl.json_lines(&["stats", &id_text]);
    assert_eq!(stats[0]["size"], 10, "{stats:?}");
    let status = ctl.json(&["status"]);
    assert_eq!(status["messages_processed"], 11, "{status}");
    assert!(
        status["state_bytes_written"].as_u64().unwrap() > 11 * 100,
        "eleven messages wrote their profiles: {status}"
    );
    let text = ctl.text(&["status"]);
    assert!(
        text.contains("state written ") && text.contains("KiB"),
        "{text}"
    );
    assert!(!status["partitions"].as_array().unwrap().is_empty());
    let clock = ctl.json(&["clock", "get"]);
    assert!(
        is_rfc3339(&clock["now"]) && clock["manual"] == true,
        "{clock}"
    );
    assert!(ctl.text(&["clock", "get"]).contains("a manual clock"));
    let replay = ctl.json(&["replay"]);
    assert_eq!(replay["running"], false, "{replay}");
    ctl.json_lines(&["connectors"]);

    // Clone: a draft copy with the original's tags and criteria, under a new name.
    let copy = ctl.json(&["audience", "clone", &id_text, "--name", "Gold again"]);
    assert_eq!(
        (&copy["name"], &copy["status"], &copy["tags"]),
        (&json!("Gold again"), &json!("draft"), &json!(["cli"])),
        "{copy}"
    );
    assert_ne!(copy["id"], id, "{copy}");
    let copied = ctl.json(&["audience", "get", &copy["id"].to_string()]);
    assert_eq!(copied["criteria"], got["criteria"]);
    let text = ctl.text(&["audience", "clone", &id_text]);
    assert!(text.contains("Copy of Gold viewers"), "{text}");

    // Tags: several select the audiences carrying all of them; a tag has at most 18
    // characters.
    let tagged = |tags: &[&str]| {
        let mut args = vec!["audience", "list"];
        tags.iter().for_each(|t| args.extend(["--tag", *t]));
        let listed = ctl.json_lines(&args);
        listed
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let vip = json!({"name": "VIP", "tags": ["cli", "vip", "eighteen-chars-xyz"],
                     "criteria": definition["criteria"]});
    let vip = write(dir.path(), "vip.json", &vip.to_string());
    ctl.json(&["audience", "create", &vip, "--draft"]);
    assert_eq!(tagged(&["cli"]).len(), 4, "{:?}", tagged(&["cli"]));
    assert_eq!(tagged(&["CLI", "vip"]), vec!["VIP"]);
    assert!(tagged(&["cli", "vip", "gold"]).is_empty());
    let long = json!({"name": "long", "tags": ["cli", "nineteen-characters"],
                      "criteria": definition["criteria"]});
    let long = write(dir.path(), "long.json", &long.to_string());
    let refused = ctl.error(&["audience", "create", &long]);
    assert!(
        refused.contains("tags[1]") && refused.contains("has 19 characters"),
        "{refused}"
    );

    // Calculated attributes, tiers, outputs and connections.
    let calc = write(
        dir.path(),
        "views.json",
        &json!({"name": "views", "calculation": "count",
                "event": {"type": "custom_event", "name": "Viewed Item"}})
        .to_string(),
    );
    assert!(ctl.text(&["calc", "put", &calc]).contains("defined"));
    let calcs = ctl.json_lines(&["calc", "list"]);
    assert!(calcs.iter().any(|c| c["name"] == "views"), "{calcs:?}");
    let tiers = ctl.json_lines(&["tier", "custom_event", "Viewed Item", "personalize"]);
    assert!(
        tiers.iter().any(|t| t["tier"] == "personalize"),
        "{tiers:?}"
    );
    let output = write(
        dir.path(),
        "out.json",
        &json!({"name": "partner", "kind": "grpc", "settings": {}, "accepted_identities": ["email"]}).to_string(),
    );
    let created_output = ctl.json(&["output", "create", &output]);
    let output_id = created_output["id"]
        .as_u64()
        .expect("an output id")
        .to_string();
    assert!(ctl
        .json_lines(&["output", "list"])
        .iter()
        .any(|o| o["name"] == "partner"));
    let connected = ctl.json(&["connection", "create", "--output-id", &output_id, &id_text]);
    assert!(connected["connection_id"].is_u64(), "{connected}");
    let connections = ctl.json_lines(&["connection", "list"]);
    assert!(
        connections.iter().any(|c| c["audience_id"] == id),
        "{connections:?}"
    );
    ctl.json_lines(&["connection", "faults"]);

    // A closed pipe ends the command quietly, whether it closes first or after a line.
    let mut child = ctl
        .command(&["members", &id_text])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' members {id} | head -1",
            ctl_binary().display()
        ))
        .env("AUDIENCE_SERVER", &ctl.server)
        .env("AUDIENCE_TOKEN", ctl.token.as_deref().unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(String::from_utf8_lossy(&piped.stdout).lines().count(), 1);
    assert!(stderr.is_empty(), "nothing on standard error: {stderr}");

    // Errors: one line, naming what was wrong and what to do.
    let missing = ctl.error(&["explain", "1034", "999999"]);
    assert!(missing.contains("999999"), "{missing}");
    let nobody = Ctl {
        server: format!("http://127.0.0.1:{}", free_port()),
        token: None,
    };
    let down = nobody.error(&["status"]);
    assert!(
        down.contains(&format!("no engine at {}", nobody.server)) && down.contains("make run"),
        "{down}"
    );

    // Topics.
    let ready = ctl.text(&[
        "create-topics",
        "--bootstrap",
        &broker.bootstrap,
        "--partitions",
        "2",
        "cli-extra",
    ]);
    assert!(ready.contains("topics ready: cli-extra"), "{ready}");

    // Shell completions.
    assert!(ctl.text(&["completions", "bash"]).contains("audiencectl"));
    assert!(ctl
        .text(&["completions", "zsh"])
        .contains("#compdef audiencectl"));
    assert!(ctl
        .text(&["completions", "fish"])
        .contains("complete -c audiencectl"));
    let _ = std::io::stdout().flush();
    Ok(())
}

/// A user's batch: an email, a tier and an age.
fn tiered(mpid: i64, now: i64, tier: &str) -> Value {
    let mut b = sdk_batch(mpid, now, vec![]);
    b["user_identities"] = json!({"email": format!("u{mpid}@example.com")});
    b["user_attributes"] = json!({"tier": tier, "age": 30 + mpid, "secret": "kept"});
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_connection_chooses_its_attributes_sends_and_syncs_again_after_pruning(
) -> Result<()> {
    use audience_e2e::webhook::{members, receiver_view, start_hook, wait_for, webhook};
    use audience_proto::v1 as pb;
    let broker = Broker::start()?;
    let topics = Topics::unique("clisync");
    let dir = tempfile::tempdir()?;
    let mut engine = Engine::start(&broker, &topics, &dir.path().join("engine"), "clisync")?;
    let ch = engine.ready().await?;
    let ctl = Ctl {
        server: engine.grpc.clone(),
        token: engine.client.token.clone(),
    };
    let gold = create_audience(
        &ch,
        "gold",
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
    )
    .await?;
    let (hook, url) = start_hook().await?;
    let mut outputs = pb::output_service_client::OutputServiceClient::new(ch.clone());
    let output = webhook(
        &mut outputs,
        "crm",
        &url,
        &["email"],
        json!({"linger_ms": 1}),
    )
    .await?;

    // Created INACTIVE, sharing nothing; then its attributes are chosen.
    let (gold_id, output_id) = (gold.id.to_string(), output.id.to_string());
    let created = ctl.json(&[
        "connection",
        "create",
        "--output-id",
        &output_id,
        &gold_id,
        "--inactive",
    ]);
    let id = created["connection_id"]
        .as_u64()
        .expect("a connection")
        .to_string();
    let listed = ctl.json_lines(&["connection", "list", "--audience", &gold_id]);
    assert_eq!(
        (&listed[0]["status"], &listed[0]["shared_attributes"]),
        (&json!("inactive"), &json!([])),
        "{listed:?}"
    );
    let updated = ctl.json(&[
        "connection",
        "update",
        &id,
        "--share",
        "tier",
        "--share",
        "age",
    ]);
    assert_eq!(
        (&updated["status"], &updated["shared_attributes"]),
        (&json!("inactive"), &json!(["tier", "age"])),
        "{updated}"
    );
    let text = ctl.text(&["connection", "list"]);
    assert!(
        text.contains("inactive") && text.contains("shares tier, age"),
        "{text}"
    );

    // Ten gold users: an inactive connection sends nothing.
    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    for mpid in 1..=10 {
        produce_json(&producer, &topics.events, &tiered(mpid, now, "gold")).await?;
    }
    wait_processed(&ch, 10, Duration::from_secs(60)).await?;
    assert!(hook.accepted.lock().unwrap().is_empty());

    // Sending: the current members, with the chosen attributes only.
    ctl.json(&["connection", "status", &id, "sending"]);
    let all: Vec<i64> = (1..=10).collect();
    wait_for("the ten members", Duration::from_secs(30), || {
        members(&receiver_view(&hook)) == all
    })
    .await?;
    let item = &receiver_view(&hook)[&3].2;
    assert_eq!(
        item["attributes"],
        json!({"tier": "gold", "age": 33.0}),
        "{item}"
    );

    // Inactive again while half leave, and long enough for the outbox to be pruned past it:
    // it no longer holds pruning back.
    ctl.json(&["connection", "status", &id, "inactive"]);
    for mpid in 1..=5 {
        produce_json(&producer, &topics.events, &tiered(mpid, now, "silver")).await?;
    }
    wait_processed(&ch, 15, Duration::from_secs(60)).await?;
    advance_clock(&ch, 8 * 24 * 3_600_000).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let retained = collect_deltas(&ch, vec![gold.id], "", Duration::from_millis(500), |d| {
            !d.is_empty()
        })
        .await?;
        if retained.is_empty() {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the outbox was not pruned: {} deltas retained",
            retained.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Sending again: the drops it missed are gone from the outbox, so it syncs again from the
    // members as they are, with the drops of those who left, and the receiver agrees.
    ctl.json(&["connection", "status", &id, "sending"]);
    let staying: Vec<i64> = (6..=10).collect();
    wait_for(
        "the receiver to drop the five who left",
        Duration::from_secs(30),
        || members(&receiver_view(&hook)) == staying,
    )
    .await?;
    let view = receiver_view(&hook);
    assert!((1..=5).all(|m| view[&m].1 == "drop"), "{view:?}");
    Ok(())
}
