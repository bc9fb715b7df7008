//! `ledger export`, `ledger import` and `ledger check`: the ledger as a
//! file, written whole or not at all, and recounted.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use palworker_config::Settings;

use crate::ledger::{CheckMode, Ledger, LedgerError};
use crate::operators::Operations;

use super::UsageError;

/// `ledger export FILE`: the snapshot is written to a temporary file beside
/// FILE and renamed over it once complete, so FILE is a whole export or is
/// left as it was.
pub(super) async fn export_ledger(target: &impl Operations, file: &Path) -> anyhow::Result<()> {
    if file == Path::new("-") {
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let records = target.export_ledger(&mut out).await?;
        tracing::info!(records, "Ledger exported to standard output.");
        return Ok(());
    }
    let partial = partial_path(file);
    let written = async {
        let handle = std::fs::File::create(&partial)
            .with_context(|| format!("creating `{}`", partial.display()))?;
        let mut out = std::io::BufWriter::new(handle);
        let progress = crate::progress::spinner("exporting the ledger");
        let records = target.export_ledger(&mut out).await?;
        let handle = out.into_inner().map_err(|e| e.into_error())?;
        handle.sync_all()?;
        progress.finish_and_clear();
        std::fs::rename(&partial, file)
            .with_context(|| format!("renaming `{}` to `{}`", partial.display(), file.display()))?;
        anyhow::Ok(records)
    }
    .await;
    match written {
        Ok(records) => {
            println!("exported {records} record(s) to `{}`", file.display());
            Ok(())
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            Err(error.context(format!("exporting the ledger to `{}`", file.display())))
        }
    }
}

/// `FILE.partial`, beside FILE.
pub(super) fn partial_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    file.with_file_name(name)
}

/// `ledger import FILE`: loads the export into a fresh directory beside
/// `ledger.path` and renames it into place once complete, so a failed import
/// leaves nothing half-made where the worker looks. `ledger.path` must not
/// exist, or be an empty directory.
pub(super) async fn import_ledger(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    let path = settings.ledger.path.clone();
    let file = file.to_owned();
    let cache = settings.ledger.cache_capacity_bytes.min(16 * 1024 * 1024);
    tokio::task::spawn_blocking(move || {
        let occupied = match std::fs::read_dir(&path) {
            Ok(mut entries) => entries.next().is_some(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => {
                return Err(anyhow::Error::from(error))
                    .with_context(|| format!("reading `{}`", path.display()));
            }
        };
        if occupied {
            return Err(UsageError(format!(
                "the ledger at `{}` exists: import into a new ledger (set ledger.path to an empty or absent directory)",
                path.display()
            ))
            .into());
        }
        let input = std::fs::File::open(&file)
            .map_err(|e| UsageError(format!("`{}`: {e}", file.display())))?;
        let importing = partial_path(&path);
        if importing.exists() {
            std::fs::remove_dir_all(&importing)
                .with_context(|| format!("removing the unfinished `{}`", importing.display()))?;
        }
        let imported = (|| {
            let ledger = Ledger::open(&importing, cache)?;
            let progress = crate::progress::spinner("importing the ledger");
            let transferred = ledger.import(std::io::BufReader::new(input))?;
            progress.finish_and_clear();
            anyhow::Ok(transferred)
        })();
        let transferred = match imported {
            Ok(transferred) => transferred,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&importing);
                return Err(match error.downcast::<LedgerError>() {
                    Ok(LedgerError::Rejected(why)) => {
                        UsageError(format!("`{}`: {why}", file.display())).into()
                    }
                    Ok(other) => anyhow::Error::from(other),
                    Err(other) => other,
                });
            }
        };
        if path.exists() {
            std::fs::remove_dir(&path)
                .with_context(|| format!("replacing the empty `{}`", path.display()))?;
        }
        std::fs::rename(&importing, &path).with_context(|| {
            format!("renaming `{}` to `{}`", importing.display(), path.display())
        })?;
        println!(
            "imported {} record(s) into the ledger at `{}`",
            transferred.records,
            path.display()
        );
        Ok(())
    })
    .await?
}

/// How `ledger check` prints differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckOutput {
    /// One sentence per line.
    Text,
    /// JSON Lines, one object per difference (with `repaired`).
    Json,
}

/// `ledger check [--repair]`: on the ledger itself, never through a running
/// worker, whose writes would show as differences while the counts are
/// recounted (and a repair would overwrite them). A held ledger is a usage
/// error (exit 2); differences exit 1 — with `--repair`, only those a
/// second check still finds.
pub(super) async fn check_ledger(
    settings: &Settings,
    mode: CheckMode,
    output: CheckOutput,
) -> anyhow::Result<()> {
    let path = settings.ledger.path.clone();
    let cache = settings.ledger.cache_capacity_bytes.min(16 * 1024 * 1024);
    tokio::task::spawn_blocking(move || {
        let ledger = match Ledger::open(&path, cache) {
            Ok(ledger) => ledger,
            Err(LedgerError::Locked(_)) => {
                return Err(UsageError(format!(
                    "the ledger at `{}` is in use by a running worker: stop the worker first \
                     (`ledger check` recounts a ledger nobody writes meanwhile)",
                    path.display()
                ))
                .into());
            }
            Err(error) => {
                return Err(anyhow::Error::from(error))
                    .with_context(|| format!("opening the ledger at `{}`", path.display()));
            }
        };
        let progress = crate::progress::spinner("checking the ledger");
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        // The first write error (a closed pipe) ends the command after the check.
        let mut unwritten: Option<anyhow::Error> = None;
        let repaired = mode == CheckMode::Repair;
        let found = ledger.check(mode, &mut |difference| {
            if unwritten.is_none() {
                unwritten = print_difference(&mut out, difference, output, repaired).err();
            }
        })?;
        if let Some(error) = unwritten.take() {
            return Err(error);
        }
        if found == 0 {
            progress.finish_and_clear();
            if output == CheckOutput::Text {
                writeln!(out, "the ledger is consistent: no difference")?;
            }
            out.flush()?;
            return Ok(());
        }
        if mode == CheckMode::Report {
            progress.finish_and_clear();
            out.flush()?;
            anyhow::bail!(
                "{found} difference(s) between the ledger's records and its counters or indexes; \
                 `palworker ledger check --repair` rewrites them"
            );
        }
        tracing::info!(differences = found, "Ledger counters and indexes repaired.");
        let remaining = ledger.check(CheckMode::Report, &mut |difference| {
            if unwritten.is_none() {
                unwritten = print_difference(&mut out, difference, output, false).err();
            }
        })?;
        if let Some(error) = unwritten.take() {
            return Err(error);
        }
        progress.finish_and_clear();
        if remaining > 0 {
            out.flush()?;
            anyhow::bail!("{found} difference(s) repaired, but {remaining} remain");
        }
        if output == CheckOutput::Text {
            writeln!(
                out,
                "repaired {found} difference(s); the ledger is consistent"
            )?;
        }
        out.flush()?;
        Ok(())
    })
    .await?
}

pub(super) fn print_difference(
    out: &mut impl Write,
    difference: &crate::ledger::Difference,
    output: CheckOutput,
    repaired: bool,
) -> anyhow::Result<()> {
    match output {
        CheckOutput::Json => {
            let mut line = serde_json::to_value(difference)?;
            line["repaired"] = repaired.into();
            writeln!(out, "{line}")?;
        }
        CheckOutput::Text if repaired => writeln!(out, "repaired: {difference}")?,
        CheckOutput::Text => writeln!(out, "{difference}")?,
    }
    Ok(())
}

/// `ledger repartition --count M --out DIR EXPORT…`: the exports of every
/// partition in, `DIR/partition-{i}.jsonl` for each of M partitions out
/// (`ledger::repartition`), each written beside as `.partial` and renamed
/// once all are complete. DIR must not hold those files yet.
pub(super) async fn repartition_exports(
    count: u32,
    out: &Path,
    exports: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let count = palworker_events::PartitionCount::new(count)
        .map_err(|error| UsageError(format!("--count {count}: {error}")))?;
    if exports.is_empty() {
        return Err(UsageError("name at least one ledger export".to_owned()).into());
    }
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&out).with_context(|| format!("creating `{}`", out.display()))?;
        let finals: Vec<PathBuf> = count
            .all()
            .map(|partition| out.join(crate::ledger::export_file_name(partition)))
            .collect();
        if let Some(existing) = finals.iter().find(|file| file.exists()) {
            return Err(UsageError(format!(
                "`{}` exists: re-partition into an empty directory",
                existing.display()
            ))
            .into());
        }
        let mut sources: Vec<(String, Box<dyn std::io::BufRead>)> = Vec::new();
        for export in &exports {
            let file = std::fs::File::open(export)
                .with_context(|| format!("opening `{}`", export.display()))?;
            sources.push((
                export.display().to_string(),
                Box::new(std::io::BufReader::new(file)),
            ));
        }
        let partials: Vec<PathBuf> = finals.iter().map(|file| partial_path(file)).collect();
        let written = (|| -> anyhow::Result<crate::ledger::Repartitioned> {
            let mut files = partials
                .iter()
                .map(|path| {
                    std::fs::File::create(path)
                        .map(std::io::BufWriter::new)
                        .with_context(|| format!("creating `{}`", path.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let outputs: Vec<&mut dyn Write> =
                files.iter_mut().map(|file| file as &mut dyn Write).collect();
            let moved = crate::ledger::repartition(sources, count, outputs, chrono::Utc::now())?;
            for file in files {
                file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            }
            Ok(moved)
        })();
        let moved = match written {
            Ok(moved) => moved,
            Err(error) => {
                for partial in &partials {
                    let _ = std::fs::remove_file(partial);
                }
                return Err(error);
            }
        };
        for (partial, file) in partials.iter().zip(&finals) {
            std::fs::rename(partial, file)
                .with_context(|| format!("renaming `{}`", partial.display()))?;
        }
        for (file, accounts) in finals.iter().zip(&moved.accounts) {
            println!("{}: {accounts} account(s)", file.display());
        }
        println!(
            "{} deduplication marker(s) in every partition{}; import each file with `palworker ledger import` into partition i's new ledger",
            moved.markers,
            if moved.paused { ", paused" } else { "" }
        );
        Ok(())
    })
    .await?
}
