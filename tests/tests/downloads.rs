//! Audience downloads through the real broker and the CLI: a selection of three audiences, one
//! of them as two variations of its A/B test, saved as a ZIP that Python's `zipfile` and `csv`
//! modules read back; every file's rows and every manifest field are checked against the
//! identities produced and the engine's membership. A sample is smaller, and a subset.

use audience_e2e::*;
use audience_proto::v1 as pb;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const USERS: i64 = 120;

/// What each user's identities are: an email but for every tenth, a customer id (one with a
/// comma) for every third.
fn identities_of(mpid: i64) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if mpid % 10 != 0 {
        out.push(("email", format!("u{mpid}@example.com")));
    }
    if mpid % 3 == 0 {
        out.push(("customer_id", format!("c,{mpid}")));
    }
    out
}

/// Reads a ZIP with Python's zipfile and csv modules: its names, its manifest, and each CSV
/// file's header and rows.
fn read_zip(path: &std::path::Path) -> Result<Value> {
    let script = r#"
import csv, io, json, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    assert z.testzip() is None
    out = {"names": z.namelist(), "manifest": json.loads(z.read("manifest.json")), "files": {}}
    for name in z.namelist():
        if name.endswith(".csv"):
            rows = list(csv.reader(io.TextIOWrapper(z.open(name), encoding="utf-8", newline="")))
            out["files"][name] = {"header": rows[0], "rows": rows[1:]}
print(json.dumps(out))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The (mpid, value, type) rows a set of members should have.
fn expected_rows(members: &BTreeSet<i64>) -> BTreeSet<(i64, String, String)> {
    members
        .iter()
        .flat_map(|&m| {
            identities_of(m)
                .into_iter()
                .map(move |(t, v)| (m, v, t.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_holds_each_audience_and_variation_as_the_engine_does() -> Result<()> {
    let broker = Broker::start()?;
    let topics = Topics::unique("downloads");
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("engine");
    let mut engine = Engine::start(&broker, &topics, &data, "downloads")?;
    let ch = engine.ready().await?;
    let mut audiences = pb::audience_service_client::AudienceServiceClient::new(ch.clone());
    let players = create_audience(&ch, "players", json!({"event": {"name": "play"}})).await?;
    let gold = create_audience(
        &ch,
        "gold",
        json!({"user_attribute": {"name": "tier", "op": "exact_match", "value": "gold"}}),
    )
    .await?;
    let buyers = create_audience(&ch, "buyers", json!({"event": {"name": "buy"}})).await?;
    audiences
        .create_ab_test(pb::CreateAbTestRequest {
            audience_id: players.id,
            variations: vec![pb::AbVariation {
                name: "Email".into(),
                percent: 50,
            }],
        })
        .await?;

    let producer = broker.producer()?;
    let now = engine_now(&ch).await?;
    for mpid in 1..=USERS {
        let mut events = vec![custom_event("Play", "navigation", now, json!({}))];
        if mpid % 4 == 0 {
            events.push(custom_event("Buy", "transaction", now, json!({})));
        }
        let identities: serde_json::Map<String, Value> = identities_of(mpid)
            .into_iter()
            .map(|(t, v)| (t.to_string(), v.into()))
            .collect();
        let batch = json!({
            "mpid": mpid,
            "timestamp_unixtime_ms": now,
            "user_identities": identities,
            "user_attributes": {"tier": if mpid % 2 == 0 { "gold" } else { "silver" }},
            "events": events,
        });
        produce_json(&producer, &topics.events, &batch).await?;
    }
    let expected_sizes = [
        (players.id, USERS),
        (gold.id, USERS / 2),
        (buyers.id, USERS / 4),
    ];
    let total: usize = expected_sizes.iter().map(|(_, n)| *n as usize).sum();
    let ids = vec![players.id, gold.id, buyers.id];
    let deltas =
        collect_deltas(&ch, ids, "", Duration::from_secs(60), |d| d.len() >= total).await?;
    assert_eq!(deltas.len(), total);
    let mut members: BTreeMap<u64, BTreeSet<i64>> = BTreeMap::new();
    let mut variation_of: BTreeMap<i64, String> = BTreeMap::new();
    for d in &deltas {
        members.entry(d.audience_id).or_default().insert(d.mpid);
        if d.audience_id == players.id {
            variation_of.insert(d.mpid, d.variation.clone());
        }
    }
    for (id, n) in expected_sizes {
        assert_eq!(members[&id].len() as i64, n, "audience {id}");
    }

    // The CLI starts it, shows its progress and saves the ZIP.
    let zip_path = dir.path().join("selection.zip");
    let out = engine
        .ctl()
        .args(["--output", "json", "download", "start"])
        .args([players.id, gold.id, buyers.id].map(|id| id.to_string()))
        .args(["--variation", &format!("{}:email", players.id)])
        .args(["--variation", &format!("{}:Control", players.id)])
        .args(["--identity", "email", "--identity", "Customer_ID"])
        .arg("--out")
        .arg(&zip_path)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(shown["state"], "ready", "{shown}");
    let zip = read_zip(&zip_path)?;
    let manifest = &zip["manifest"];
    assert_eq!(
        manifest, &shown["manifest"],
        "the API shows the manifest of the ZIP"
    );

    // The archive is in the configured directory (the data directory's by default).
    let archive = shown["archive_name"].as_str().unwrap();
    assert!(data.join("downloads").join(archive).exists());
    assert_eq!(manifest["archive_name"], archive);
    assert_eq!(manifest["id"], shown["id"]);
    assert_eq!(
        manifest["audience_ids"],
        json!([players.id, gold.id, buyers.id])
    );
    assert_eq!(
        manifest["included_identities"],
        json!(["email", "customer_id"])
    );
    assert!(
        manifest["manifest_generated"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{manifest}"
    );

    // A file per selection: players' two variations, gold and buyers whole.
    let files = manifest["files"].as_array().unwrap();
    assert_eq!(files.len(), 4, "{manifest}");
    let mut names: Vec<&str> = files
        .iter()
        .map(|f| f["file_name"].as_str().unwrap())
        .collect();
    names.push("manifest.json");
    let zipped: Vec<&str> = zip["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(zipped, names);
    let mut all_stamps = Vec::new();
    let mut total_rows = 0u64;
    let mut by_identity: BTreeMap<String, u64> = BTreeMap::new();
    for f in files {
        let name = f["file_name"].as_str().unwrap();
        let audience = f["audience_id"].as_u64().unwrap();
        let mut selected = members[&audience].clone();
        if let Some(v) = f["variation"].as_str() {
            selected.retain(|m| variation_of[m] == v);
            assert!(name.ends_with(&format!(" - {v}.csv")), "{name}");
        }
        let csv = &zip["files"][name];
        assert_eq!(
            csv["header"],
            json!([
                "mpid",
                "scanned_timestamp_ms",
                "identity_value",
                "identity_type"
            ])
        );
        let mut rows = BTreeSet::new();
        let mut stamps = Vec::new();
        let mut users = BTreeSet::new();
        let mut file_by_identity: BTreeMap<String, u64> = BTreeMap::new();
        for row in csv["rows"].as_array().unwrap() {
            let cells: Vec<&str> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            let mpid: i64 = cells[0].parse()?;
            stamps.push(cells[1].parse::<i64>()?);
            users.insert(mpid);
            *file_by_identity.entry(cells[3].to_string()).or_default() += 1;
            rows.insert((mpid, cells[2].to_string(), cells[3].to_string()));
        }
        let row_count = csv["rows"].as_array().unwrap().len();
        assert_eq!(rows.len(), row_count, "{name}: no row twice");
        assert_eq!(rows, expected_rows(&selected), "{name}");
        assert_eq!(f["total_rows"], row_count, "{name}");
        assert_eq!(f["total_users"], users.len(), "{name}");
        assert_eq!(f["rows_by_identity"], json!(file_by_identity), "{name}");
        assert_eq!(f["min_timestamp_ms"], json!(stamps.iter().min()), "{name}");
        assert_eq!(f["max_timestamp_ms"], json!(stamps.iter().max()), "{name}");
        assert!(
            stamps.iter().all(|&t| t >= now),
            "{name}: scanned after the events"
        );
        all_stamps.extend(stamps);
        total_rows += row_count as u64;
        for (t, n) in file_by_identity {
            *by_identity.entry(t).or_default() += n;
        }
    }
    let players_rows: usize = files[..2]
        .iter()
        .map(|f| f["total_users"].as_u64().unwrap() as usize)
        .sum();
    let with_rows = members[&players.id]
        .iter()
        .filter(|&&m| !identities_of(m).is_empty())
        .count();
    assert_eq!(
        players_rows, with_rows,
        "the two variations make the whole audience"
    );
    assert_eq!(manifest["total_rows"], total_rows);
    assert_eq!(manifest["rows_by_identity"], json!(by_identity));
    assert_eq!(manifest["min_timestamp_ms"], json!(all_stamps.iter().min()));
    assert_eq!(manifest["max_timestamp_ms"], json!(all_stamps.iter().max()));

    // A sample: at most 5 users per file, each a member with its rows.
    let sample_path = dir.path().join("sample.zip");
    let out = engine
        .ctl()
        .args([
            "download",
            "start",
            &gold.id.to_string(),
            "--identity",
            "email",
        ])
        .args(["--sample", "5", "--out"])
        .arg(&sample_path)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sample = read_zip(&sample_path)?;
    let file = &sample["manifest"]["files"][0];
    assert_eq!(file["total_users"], 5, "{sample}");
    assert_eq!(sample["manifest"]["sample"], true);
    let rows = sample["files"][file["file_name"].as_str().unwrap()]["rows"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(rows.len(), 5);
    for row in rows {
        let mpid: i64 = row[0].as_str().unwrap().parse()?;
        assert!(members[&gold.id].contains(&mpid), "{row}");
        assert_eq!(row[2], format!("u{mpid}@example.com"));
    }

    // Refusals name what is wrong.
    let mut downloads = pb::download_service_client::DownloadServiceClient::new(ch.clone());
    let refused = downloads
        .start_download(pb::StartDownloadRequest {
            selections: vec![pb::DownloadSelection {
                audience_id: gold.id,
                variations: vec!["Email".into()],
            }],
            identity_types: vec!["email".into()],
            sample_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("no A/B test"), "{refused:?}");
    let refused = downloads
        .start_download(pb::StartDownloadRequest {
            selections: vec![pb::DownloadSelection {
                audience_id: gold.id,
                variations: vec![],
            }],
            identity_types: vec![],
            sample_size: 0,
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("identity_types"), "{refused:?}");
    let listed = downloads
        .list_downloads(pb::ListDownloadsRequest {})
        .await?
        .into_inner()
        .downloads;
    assert_eq!(listed.len(), 2);
    Ok(())
}
