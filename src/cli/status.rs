//! `coffre status`: the running daemon's status document, read from its status endpoint as the
//! one [`StatusDoc`] type the daemon writes, printed as text or as JSON.

use anyhow::{bail, Context, Result};

use super::ctx::{exit, Globals};
use super::out::{outln, Out};
use crate::status::StatusDoc;

/// `coffre status`: ask the daemon for its status, with the config as well as it can be read.
pub async fn run_local(globals: &Globals, json: bool) -> Result<u8> {
    run(&config_for_status(globals)?, json).await
}

/// Ask the daemon configured in `config` for its status.
pub async fn run(config: &crate::config::Config, json: bool) -> Result<u8> {
    let doc = fetch(config).await?;
    let w = Out::local();
    if json {
        w.json(&doc)?;
    } else {
        print(&w, &doc);
    }
    Ok(exit::OK)
}

async fn fetch(config: &crate::config::Config) -> Result<StatusDoc> {
    let url = format!("http://{}/status", config.status.listen);
    let mut req = reqwest::Client::new()
        .get(&url)
        .timeout(std::time::Duration::from_secs(10));
    if let Some(tf) = &config.status.token_file {
        let token = crate::config::read_secret_file(tf)
            .map_err(|e| anyhow::anyhow!("status.token-file: {e}"))?;
        req = req.bearer_auth(secrecy::ExposeSecret::expose_secret(&token));
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("the daemon's status endpoint {url} does not answer: is `coffre daemon` running with this config?"))?;
    if !resp.status().is_success() {
        bail!("the status endpoint {url} answered {}", resp.status());
    }
    let text = resp.text().await?;
    serde_json::from_str(&text).with_context(|| {
        format!("{url} did not answer with a coffre status document: is the daemon the same version as this command?")
    })
}

fn print(w: &Out, doc: &StatusDoc) {
    outln!(
        w,
        "coffre {} on {} (up {:.0} s, ready: {})",
        doc.version,
        doc.host,
        doc.uptime_seconds,
        doc.ready
    );
    for s in &doc.sources {
        outln!(
            w,
            "source {:<12} {:<10} snapshots {:>5}  last {}  age {}",
            s.name,
            s.state,
            s.snapshots,
            s.last_snapshot.as_deref().unwrap_or("-"),
            s.age_seconds
                .map(|a| format!("{a:.0} s"))
                .unwrap_or_else(|| "-".into())
        );
        if let Some(e) = &s.folder_error {
            outln!(w, "       folder cannot be scanned: {e}");
        }
        if let Some(wal) = &s.wal {
            outln!(w, "       {}", wal_line(wal));
        }
    }
    for s in &doc.stores {
        outln!(
            w,
            "store  {:<12} site {:<10} up {:<5} lag {:>4}  last error {}",
            s.name,
            s.site,
            s.health.up,
            s.lag_snapshots,
            s.health.last_error_kind.as_deref().unwrap_or("-")
        );
    }
    for p in &doc.in_progress {
        outln!(w, "{}", in_progress_line(p));
    }
    if let Some(reason) = &doc.config_reload.reason {
        outln!(
            w,
            "reload refused at {}, the running configuration stays:\n{reason}",
            doc.config_reload.last_refused_at.as_deref().unwrap_or("?")
        );
    }
    for a in &doc.alerts {
        outln!(w, "ALERT: {a}");
    }
}

/// `now    protect   emr snapshot 01J... store b: 412.0 MiB of 1.0 GiB, 96.3 MiB/s, eta 6 s`
fn in_progress_line(p: &crate::progress::Progress) -> String {
    let mib = |b: f64| format!("{:.1} MiB", b / (1024.0 * 1024.0));
    let of = p
        .bytes_total
        .map(|t| format!(" of {}", mib(t as f64)))
        .unwrap_or_default();
    let eta = p
        .eta_seconds
        .map(|e| format!(", eta {e:.0} s"))
        .unwrap_or_default();
    let store = p
        .store
        .as_deref()
        .map(|s| format!(" store {s}"))
        .unwrap_or_default();
    let activity = serde_json::to_value(p.activity)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "now    {activity:<9} {} snapshot {}{store}: {}{of}, {}/s{eta}",
        p.source,
        p.snapshot,
        mib(p.bytes_done as f64),
        mib(p.bytes_per_second),
    )
}

/// One source's WAL archive: a recoverable range only when there is one (WAL archived and a
/// base backup to replay it from).
fn wal_line(wal: &crate::status::WalStatus) -> String {
    if wal.files == 0 {
        return "WAL archive: nothing archived yet: no point-in-time recovery is possible. Check that PostgreSQL's archive_mode is on and its archive_command is `coffre wal-push` for this source (pg_stat_archiver on the primary; alert CoffreWalNeverArchived)".into();
    }
    let age = wal
        .archive_age_seconds
        .map(|a| format!("{a:.0} s"))
        .unwrap_or_else(|| "-".into());
    let range = match wal.window_start.as_deref() {
        Some(start) => format!("recoverable from {start} to the last archived WAL"),
        None => {
            "nothing recoverable yet: no base backup (take a pg_basebackup into the source folder)"
                .into()
        }
    };
    format!(
        "WAL archive: {} file(s), last {} ({age} ago); {range}",
        wal.files,
        wal.last_archived.as_deref().unwrap_or("-"),
    )
}

/// The config `status` needs (the status address and token): the file as well as it can be
/// read, so that a file broken since the daemon started still reaches the running daemon.
fn config_for_status(globals: &Globals) -> Result<crate::config::Config> {
    let path = globals.config_path();
    let err = match crate::config::Config::load(&path) {
        Ok(c) => return Ok(c),
        Err(e @ crate::config::ConfigError::Read { .. }) => return Err(e.into()),
        Err(e) => e,
    };
    let text = std::fs::read_to_string(&path)?;
    let (config, problems) =
        crate::config::Config::check_text(&text, Some(&crate::config::config_folder(&path)));
    let Some(config) = config else {
        return Err(err.into());
    };
    eprintln!(
        "warning: {} has {} problem(s) (`coffre check-config` lists them); the running daemon is asked at {} all the same",
        path.display(),
        problems.len(),
        config.status.listen
    );
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{Activity, Progress};

    #[test]
    fn an_in_progress_line_names_the_work_its_size_rate_and_eta() {
        let p = Progress {
            activity: Activity::CatchUp,
            snapshot: "01J0000000000000000000000A".into(),
            source: "emr".into(),
            store: Some("b".into()),
            bytes_done: 3 << 20,
            bytes_total: Some(6 << 20),
            elapsed_seconds: 1.0,
            bytes_per_second: 1.5 * 1024.0 * 1024.0,
            eta_seconds: Some(2.0),
        };
        assert_eq!(
            in_progress_line(&p),
            "now    catch-up  emr snapshot 01J0000000000000000000000A store b: 3.0 MiB of 6.0 MiB, 1.5 MiB/s, eta 2 s"
        );
    }

    #[test]
    fn the_status_document_reads_back_as_written() {
        let text = r#"{"version":"0.1.0","commit":"abc","host":"h","uptime_seconds":1.5,"ready":true,
            "sources":[{"name":"emr","snapshots":2,"last_snapshot":null,"last_created":null,"age_seconds":null,"state":"none"}],
            "stores":[{"name":"a","site":"s","jurisdiction":"CA-QC","up":true,"last_error_kind":null,"last_error_at":null,"uploaded_bytes":7,"lag_snapshots":0}],
            "keys":[],"workers":{"intake":{"state":"backing-off","runs":1,"errors":0,"last_error":null,"last_run":null}},
            "in_progress":[],"drills":[],"config_reload":{"last_refused_at":null,"reason":null},"alerts":["x"]}"#;
        let doc: StatusDoc = serde_json::from_str(text).unwrap();
        assert_eq!(doc.stores[0].health.uploaded_bytes, 7);
        assert_eq!(
            doc.workers["intake"].state,
            crate::status::WorkState::BackingOff
        );
        let again: serde_json::Value = serde_json::to_value(&doc).unwrap();
        let orig: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(again, orig);
    }
}
