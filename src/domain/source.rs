//! Input files of a blueprint or a request — schema dumps, seeds, migrations — and the naming
//! rules of the migration tools whose history tables previewdb writes.

use super::InvalidInput;
use serde::Deserialize;

/// One input file, by its name relative to its directory.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationFormat {
    /// `V{n}__{name}.sql` (and `U…`), recorded by refinery in `refinery_schema_history`.
    Refinery,
    /// `{version}_{description}.sql` / `.up.sql`, recorded by sqlx in `_sqlx_migrations`.
    Sqlx,
    /// Any `.sql` in name order, recorded by previewdb in `previewdb_migrations`.
    Plain,
}

/// A migration whose file name does not fit its format; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MigrationNameError {
    pub file: String,
    pub reason: String,
}

impl From<MigrationNameError> for InvalidInput {
    fn from(e: MigrationNameError) -> Self {
        InvalidInput::new("migrations", e.reason)
    }
}

impl MigrationFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationFormat::Refinery => "refinery",
            MigrationFormat::Sqlx => "sqlx",
            MigrationFormat::Plain => "plain",
        }
    }

    /// Checks that every file name fits the format, so bad names fail before anything runs;
    /// the first misfit is reported.
    pub fn check_names(self, files: &[SourceFile]) -> Result<(), MigrationNameError> {
        files.iter().try_for_each(|f| {
            self.check_name(&f.name)
                .map_err(|reason| MigrationNameError {
                    file: f.name.clone(),
                    reason,
                })
        })
    }

    fn check_name(self, name: &str) -> Result<(), String> {
        let stem = name
            .strip_suffix(".sql")
            .ok_or_else(|| format!("{name:?}: migrations are .sql files"))?;
        match self {
            MigrationFormat::Plain => Ok(()),
            MigrationFormat::Refinery => {
                let rest = stem.strip_prefix('V').or_else(|| stem.strip_prefix('U'));
                let ok = rest.and_then(|r| r.split_once("__")).is_some_and(|(v, n)| {
                    !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty()
                });
                ok.then_some(()).ok_or_else(|| {
                    format!("{name:?} is not a refinery migration name (V{{n}}__{{name}}.sql)")
                })
            }
            MigrationFormat::Sqlx => {
                let ok = stem
                    .split_once('_')
                    .is_some_and(|(v, d)| v.parse::<i64>().is_ok() && !d.is_empty());
                ok.then_some(()).ok_or_else(|| {
                    format!("{name:?} is not an sqlx migration name ({{version}}_{{name}}.sql)")
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_names_per_format() {
        use MigrationFormat::*;
        assert!(Refinery.check_name("V1__init.sql").is_ok());
        assert!(Refinery.check_name("U12__x.sql").is_ok());
        assert!(Refinery.check_name("1_init.sql").is_err());
        assert!(Sqlx.check_name("20240101120000_init.sql").is_ok());
        assert!(Sqlx.check_name("20240101120000_init.up.sql").is_ok());
        assert!(Sqlx.check_name("V1__init.sql").is_err());
        assert!(Plain.check_name("anything.sql").is_ok());
        assert!(Plain.check_name("anything.txt").is_err());
    }

    #[test]
    fn the_first_misfit_is_named() {
        let file = |name: &str| SourceFile {
            name: name.into(),
            text: String::new(),
        };
        let files = [file("V1__a.sql"), file("2_b.sql"), file("c.txt")];
        let e = MigrationFormat::Refinery.check_names(&files).unwrap_err();
        assert_eq!(e.file, "2_b.sql");
        assert_eq!(
            InvalidInput::from(e).to_string(),
            "migrations: \"2_b.sql\" is not a refinery migration name (V{n}__{name}.sql)"
        );
        assert!(MigrationFormat::Plain.check_names(&files[..2]).is_ok());
    }
}
