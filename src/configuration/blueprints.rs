//! `[blueprints.NAME]`: each table checked, its paths made absolute against the directory of
//! the file that named them, and its files read — so a missing or misnamed file fails the
//! configuration, not the first request that needs it.

use super::raw::{ByteSize, RawBlueprint};
use crate::blueprint::{Blueprint, BlueprintSource};
use crate::domain::{ExtensionName, MigrationFormat, PgIdent};
use anyhow::anyhow;
use std::collections::BTreeMap;
use std::path::Path;

/// How many ready clones a blueprint's pool keeps on each target unless its table says.
const DEFAULT_POOL_SIZE: u32 = 2;

/// The blueprints of a file, added to (or replacing by name) those of `base`.
pub(super) fn resolve(
    raw: BTreeMap<String, toml::Value>,
    base_dir: &Path,
    base: Option<&BTreeMap<String, Blueprint>>,
) -> anyhow::Result<BTreeMap<String, Blueprint>> {
    let mut blueprints = base.cloned().unwrap_or_default();
    for (name, table) in raw {
        let id = PgIdent::parse(&name).map_err(|_| {
            anyhow!("blueprints.{name}: blueprint names must be lowercase letters, digits and _")
        })?;
        blueprints.insert(name, read(id, table, base_dir)?);
    }
    Ok(blueprints)
}

fn read(name: PgIdent, table: toml::Value, base_dir: &Path) -> anyhow::Result<Blueprint> {
    let at = format!("blueprints.{name}");
    let raw: RawBlueprint = table.try_into().map_err(|e| anyhow!("{at}: {e}"))?;
    let extensions = raw
        .extensions
        .iter()
        .map(|e| ExtensionName::parse(e).map_err(|e| anyhow!("{at}.extensions: {}", e.reason)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Blueprint::read(BlueprintSource {
        name,
        schema: raw.schema.map(|p| base_dir.join(p)),
        migrations: raw.migrations.map(|p| base_dir.join(p)),
        format: raw.migrations_format.unwrap_or(MigrationFormat::Plain),
        seeds: raw.seeds.map(|p| base_dir.join(p)),
        extensions,
        pool_size: raw.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
        max_environment_bytes: raw.max_environment_bytes.map(ByteSize::bytes),
    })
}
