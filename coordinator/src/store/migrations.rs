//! Preparing the database at start-up: create it if missing, refuse a schema from a newer build,
//! apply pending migrations, all under one advisory lock so that coordinators starting together
//! migrate once.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use diesel::Connection;
use diesel_migrations::MigrationHarness;

use super::MIGRATIONS;

/// Key of the advisory lock held while migrating (on the migrating connection, released after; a
/// coordinator that dies holding it releases it with its session). Fixed: every build uses it.
pub const MIGRATION_LOCK_KEY: i64 = 0x5a6a_c00d_6d69_6772;

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Postgres did not answer or dropped the connection: worth waiting for.
    #[error("{0}")]
    Unreachable(String),
    /// The database was migrated by a newer build: running against it could corrupt it.
    #[error(
        "the database was migrated by a newer coordinator: migration version(s) {} unknown to this \
         build (which knows up to {}). Run the newer coordinator, or roll the database back to version \
         {} with the newer build's migrations (`diesel migration revert`) before starting this one",
        .unknown.join(", "), .newest_known, .newest_known
    )]
    NewerSchema {
        unknown: Vec<String>,
        newest_known: String,
    },
    #[error("{0}")]
    Failed(String),
}

impl From<DieselError> for PrepareError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => PrepareError::Unreachable(e.to_string()),
            other => PrepareError::Failed(other.to_string()),
        }
    }
}

impl From<ConnectionError> for PrepareError {
    fn from(e: ConnectionError) -> Self {
        // Refused, reset, authentication not yet set up, the server starting up: all may pass.
        PrepareError::Unreachable(e.to_string().trim().to_owned())
    }
}

/// Creates the database if it is missing, then (under [`MIGRATION_LOCK_KEY`]) checks that no
/// migration unknown to this build was applied and applies the pending ones. Answers how many were
/// applied.
pub fn prepare(database_url: &str) -> Result<usize, PrepareError> {
    create_database_if_missing(database_url)?;
    let mut conn = PgConnection::establish(database_url)?;
    // Coordinators starting together queue here; each then finds what the first one applied.
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))?;
    let migrated = migrate_locked(&mut conn);
    let unlocked = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
    let applied = migrated?;
    unlocked?;
    Ok(applied)
}

fn migrate_locked(conn: &mut PgConnection) -> Result<usize, PrepareError> {
    let known: Vec<String> = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| PrepareError::Failed(format!("cannot list the embedded migrations: {e}")))?
        .iter()
        .map(|m| m.name().version().to_string())
        .collect();
    let applied: Vec<String> = conn
        .applied_migrations()
        .map_err(migration_error)?
        .iter()
        .map(ToString::to_string)
        .collect();
    let unknown = unknown_versions(&known, &applied);
    if !unknown.is_empty() {
        return Err(PrepareError::NewerSchema {
            unknown,
            newest_known: known.iter().max().cloned().unwrap_or_default(),
        });
    }
    let ran: Vec<String> = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(migration_error)?
        .iter()
        .map(ToString::to_string)
        .collect();
    if !ran.is_empty() {
        // Tests count this line: coordinators started together migrate once.
        log::info!(
            "migrated the database: applied {} migration(s) ({})",
            ran.len(),
            ran.join(", ")
        );
    }
    Ok(ran.len())
}

/// Applied versions this build does not know, oldest first.
fn unknown_versions(known: &[String], applied: &[String]) -> Vec<String> {
    let mut unknown: Vec<String> = applied
        .iter()
        .filter(|v| !known.contains(v))
        .cloned()
        .collect();
    unknown.sort();
    unknown
}

/// A migration's error is boxed; a lost connection is still one to wait out.
fn migration_error(e: Box<dyn std::error::Error + Send + Sync>) -> PrepareError {
    match e.downcast::<DieselError>() {
        Ok(diesel) => PrepareError::from(*diesel),
        Err(other) => PrepareError::Failed(format!("migrations failed: {other}")),
    }
}

fn create_database_if_missing(database_url: &str) -> Result<(), PrepareError> {
    if PgConnection::establish(database_url).is_ok() {
        return Ok(());
    }
    let (server, name) = split_database_url(database_url).ok_or_else(|| {
        PrepareError::Failed(format!("cannot find the database name in {database_url:?}"))
    })?;
    let mut admin = PgConnection::establish(&format!("{server}/postgres"))?;
    let quoted = name.replace('"', "\"\"");
    match admin.batch_execute(&format!("CREATE DATABASE \"{quoted}\"")) {
        Ok(()) => {
            log::info!("created database {name}");
            Ok(())
        }
        // Another coordinator may have created it at the same moment ("already exists", or a
        // unique violation in the catalog when the race is closer).
        Err(_) if PgConnection::establish(database_url).is_ok() => Ok(()),
        // Worth another try: the server may be starting, or another creation held the template.
        Err(e) => Err(PrepareError::Unreachable(format!(
            "cannot create the database {name}: {e}"
        ))),
    }
}

/// `postgres://u@h:p/db?x` → (`postgres://u@h:p`, `db`).
fn split_database_url(url: &str) -> Option<(&str, &str)> {
    let without_query = url.split('?').next()?;
    let scheme_end = without_query.find("://")? + 3;
    let slash = without_query[scheme_end..].find('/')? + scheme_end;
    let name = &without_query[slash + 1..];
    (!name.is_empty()).then_some((&without_query[..slash], name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_versions_this_build_does_not_know_are_unknown() {
        let known = ["20261121000001".to_owned(), "20261121000002".to_owned()];
        let applied = [
            "20991231000002".to_owned(),
            "20261121000001".to_owned(),
            "20991231000001".to_owned(),
        ];
        assert_eq!(
            unknown_versions(&known, &applied),
            ["20991231000001", "20991231000002"]
        );
        assert!(unknown_versions(&known, &known[..1]).is_empty());
    }

    #[test]
    fn the_refusal_names_the_unknown_versions_and_what_to_do() {
        let refusal = PrepareError::NewerSchema {
            unknown: vec!["20991231000001".into()],
            newest_known: "20261121000004".into(),
        }
        .to_string();
        assert!(refusal.contains("newer coordinator"), "{refusal}");
        assert!(refusal.contains("20991231000001"), "{refusal}");
        assert!(refusal.contains("20261121000004"), "{refusal}");
        assert!(refusal.contains("Run the newer coordinator"), "{refusal}");
    }

    #[test]
    fn the_database_name_is_split_from_the_server() {
        assert_eq!(
            split_database_url("postgres://u@h:5432/saga?sslmode=disable"),
            Some(("postgres://u@h:5432", "saga"))
        );
        assert_eq!(split_database_url("postgres://u@h:5432/"), None);
    }
}
