//! One Postgres database per test, cloned from a migrated template.
//!
//! The template `<schema name>_test_template_<hash of the migration files>` is built once (by whichever
//! test binary gets there first, under an advisory lock on the `postgres` database): created under a
//! temporary name, migrated with the [`Schema`]'s migrations, disconnected, then renamed into place,
//! so a half-built template is never used. Each test then runs
//! `CREATE DATABASE test_<uuid> TEMPLATE <template>`, which is a file copy, and drops it at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::{BigInt, Text};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use crate::pg_server_url;

/// Key of the advisory lock that serializes template builds across test binaries.
const TEMPLATE_LOCK_KEY: i64 = 0x5a6a_7e57_0000_0001;

/// What a test database starts with: the migrations of the crate under test.
///
/// Each crate spells its schema out once, as a constant:
///
/// ```no_run
/// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
/// use testkit::{Schema, TestDb};
///
/// // The coordinator passes its own `store::MIGRATIONS` and `schema/migrations`.
/// const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations");
/// const SCHEMA: Schema = Schema {
///     name: "kit",
///     migrations: MIGRATIONS,
///     migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/tests/migrations"),
/// };
///
/// let db = TestDb::new(SCHEMA);
/// println!("{}", db.url());
/// ```
pub struct Schema {
    /// Names its templates (`{name}_test_template_{hash}`): a plain identifier. Stale templates are
    /// dropped only among those of the same name, so schemas do not drop each other's.
    pub name: &'static str,
    /// The migrations that build it, as the crate under test embeds them (`embed_migrations!`).
    pub migrations: EmbeddedMigrations,
    /// The directory they are embedded from. A hash of its files names the template, so a changed
    /// migration gets a template of its own (the embedded migrations give names, not contents).
    pub migrations_dir: &'static str,
}

/// A database of its own for one test; dropped (`WITH (FORCE)`) when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct DatabaseName {
    #[diesel(sql_type = Text)]
    datname: String,
}

impl TestDb {
    /// A fresh database with `schema`.
    pub fn new(schema: Schema) -> TestDb {
        Self::try_new(schema).expect("creating a test database")
    }

    /// A fresh database with `schema`.
    pub fn try_new(schema: Schema) -> anyhow::Result<TestDb> {
        let template = template(schema)?;
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection()?;
        // Creating from a template fails while anything is connected to the template; nothing should be,
        // but retry a few times rather than flake on a straggler.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match sql_query(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .execute(&mut admin)
            {
                Ok(_) => break,
                Err(e) if attempt < 20 => {
                    eprintln!("testkit: CREATE DATABASE {name} failed ({e}), retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    return Err(e).context(format!("CREATE DATABASE {name} TEMPLATE {template}"))
                }
            }
        }
        let url = format!("{}/{name}", pg_server_url());
        Ok(TestDb { name, url })
    }

    /// Only a name: no database is created (to check that the code under test creates a missing one).
    /// The database is still dropped, if it exists, when this value is dropped.
    pub fn reserve_name() -> TestDb {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{name}", pg_server_url());
        TestDb { name, url }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection URL, for `SAGA_DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the database exists on the server.
    pub fn exists(&self) -> anyhow::Result<bool> {
        database_exists(&mut admin_connection()?, &self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let result = admin_connection().and_then(|mut admin| {
            sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .map(|_| ())
            .map_err(anyhow::Error::from)
        });
        if let Err(e) = result {
            eprintln!("testkit: could not drop test database {}: {e:#}", self.name);
        }
    }
}

/// Whether a database of this name exists on the test server.
pub fn database_exists_named(name: &str) -> anyhow::Result<bool> {
    database_exists(&mut admin_connection()?, name)
}

fn admin_connection() -> anyhow::Result<PgConnection> {
    let url = format!("{}/postgres", pg_server_url());
    PgConnection::establish(&url).with_context(|| format!("connecting to {url}"))
}

fn database_exists(conn: &mut PgConnection, name: &str) -> anyhow::Result<bool> {
    let rows: Vec<Count> = sql_query("SELECT count(*) AS n FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(name)
        .load(conn)?;
    Ok(rows.first().is_some_and(|c| c.n > 0))
}

fn terminate_connections(conn: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind::<Text, _>(name)
    .execute(conn)?;
    Ok(())
}

/// FNV-1a over the relative paths and contents of every file under the migrations directory.
fn migrations_hash(root: &Path) -> String {
    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                collect(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    collect(root, &mut files);
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in &files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        feed(relative.to_string_lossy().as_bytes());
        feed(&[0]);
        feed(&std::fs::read(file).unwrap_or_default());
        feed(&[0]);
    }
    format!("{hash:016x}")
}

/// The name of `schema`'s migrated template database, building it if this is the first test to need it.
fn template(schema: Schema) -> anyhow::Result<String> {
    // By migrations directory: the name costs a hash of the files, paid once per test binary.
    static TEMPLATES: Mutex<BTreeMap<&'static str, String>> = Mutex::new(BTreeMap::new());
    let mut cached = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(name) = cached.get(schema.migrations_dir) {
        return Ok(name.clone());
    }
    let prefix = format!("{}_test_template_", schema.name);
    let name = format!("{prefix}{}", migrations_hash(&embedded_from(&schema)?));
    let mut admin = admin_connection()?;
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)?;
    let built = build_template(&mut admin, &name, schema.migrations);
    let unlocked = sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin);
    built?;
    unlocked?;
    mark_used(&mut admin, &name)?;
    drop_stale_templates(&mut admin, &prefix, &name);
    cached.insert(schema.migrations_dir, name.clone());
    Ok(name)
}

/// `schema.migrations_dir`, once checked to hold every embedded migration: hashing another directory
/// would name the template after files that did not build it.
fn embedded_from(schema: &Schema) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(schema.migrations_dir);
    let migrations = MigrationSource::<Pg>::migrations(&schema.migrations)
        .map_err(|e| anyhow::anyhow!("listing the {} migrations: {e}", schema.name))?;
    for migration in migrations {
        let migration = migration.name().to_string();
        anyhow::ensure!(
            dir.join(&migration).is_dir(),
            "{} has no migration {migration}: it is not where the {} migrations are embedded from",
            dir.display(),
            schema.name
        );
    }
    Ok(dir)
}

/// A template unused this long belongs to no test run still going: [`drop_stale_templates`] may
/// drop it.
const TEMPLATE_IDLE: Duration = Duration::from_secs(6 * 3600);

/// Records in the template's comment that a test binary uses it now (the time, in Unix seconds).
fn mark_used(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    sql_query(format!(
        "COMMENT ON DATABASE \"{name}\" IS 'testkit template, used {now}'"
    ))
    .execute(admin)?;
    Ok(())
}

/// Templates of earlier migration sets are dead weight once the migrations changed: drop those no
/// test binary used for [`TEMPLATE_IDLE`]. Another checkout's test run (a worktree with other
/// migrations, a CI run beside a developer's) may be about to create databases from its own
/// template between two of its tests, with nothing connected to it: dropping it by name alone
/// failed that run.
fn drop_stale_templates(admin: &mut PgConnection, prefix: &str, current: &str) {
    let idle = i64::try_from(TEMPLATE_IDLE.as_secs()).unwrap_or(i64::MAX);
    let stale: Vec<DatabaseName> = sql_query(
        "SELECT datname FROM pg_database \
         WHERE starts_with(datname, $1) AND datname <> $2 \
           AND datname NOT LIKE '%\\_building' \
           AND COALESCE(substring(shobj_description(oid, 'pg_database') \
                                  FROM 'used ([0-9]+)$')::bigint, 0) \
               < extract(epoch FROM now())::bigint - $3",
    )
    .bind::<Text, _>(prefix)
    .bind::<Text, _>(current)
    .bind::<BigInt, _>(idle)
    .load(admin)
    .unwrap_or_default();
    for db in stale {
        let dropped =
            sql_query(format!("DROP DATABASE IF EXISTS \"{}\"", db.datname)).execute(admin);
        if let Err(e) = dropped {
            eprintln!("testkit: leaving the old template {}: {e}", db.datname);
        }
    }
}

fn build_template(
    admin: &mut PgConnection,
    name: &str,
    migrations: EmbeddedMigrations,
) -> anyhow::Result<()> {
    if database_exists(admin, name)? {
        // Someone may have left a connection open; creating from it would fail.
        terminate_connections(admin, name)?;
        return Ok(());
    }
    let building = format!("{name}_building");
    sql_query(format!(
        "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
    ))
    .execute(admin)?;
    sql_query(format!("CREATE DATABASE \"{building}\"")).execute(admin)?;
    let url = format!("{}/{building}", pg_server_url());
    let mut conn =
        PgConnection::establish(&url).with_context(|| format!("connecting to {building}"))?;
    conn.run_pending_migrations(migrations)
        .map_err(|e| anyhow::anyhow!("migrating the template database {building}: {e}"))?;
    drop(conn);
    // A backend may linger for a moment after its connection closed; nothing may stay connected to a
    // template.
    for _ in 0..100 {
        terminate_connections(admin, &building)?;
        match sql_query(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .execute(admin)
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                eprintln!("testkit: renaming the template failed ({e}), retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    anyhow::bail!("could not rename {building} to {name}: connections kept coming back")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template another checkout used a moment ago survives; one idle for longer than
    /// [`TEMPLATE_IDLE`] (or never marked) is dropped.
    #[test]
    fn only_idle_templates_of_other_migration_sets_are_dropped() {
        let mut admin = admin_connection().expect("admin connection");
        let prefix = format!("tk{}_test_template_", uuid::Uuid::new_v4().simple());
        let [current, in_use, idle, unmarked] =
            ["current", "inuse", "idle", "unmarked"].map(|n| format!("{prefix}{n}"));
        for name in [&current, &in_use, &idle, &unmarked] {
            sql_query(format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .expect("creating a database");
        }
        mark_used(&mut admin, &in_use).expect("marking");
        let long_ago = 1_000_000_000u64;
        sql_query(format!(
            "COMMENT ON DATABASE \"{idle}\" IS 'testkit template, used {long_ago}'"
        ))
        .execute(&mut admin)
        .expect("commenting");

        drop_stale_templates(&mut admin, &prefix, &current);
        let exists = |admin: &mut PgConnection, name: &str| {
            database_exists(admin, name).expect("looking up a database")
        };
        assert!(exists(&mut admin, &current));
        assert!(exists(&mut admin, &in_use), "another run uses it");
        assert!(!exists(&mut admin, &idle));
        assert!(!exists(&mut admin, &unmarked));
        for name in [&current, &in_use] {
            let _ = sql_query(format!("DROP DATABASE IF EXISTS \"{name}\"")).execute(&mut admin);
        }
    }
}
