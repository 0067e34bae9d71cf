//! One Postgres database per test, cloned from a migrated template.
//!
//! The template `saga_test_template_<hash of the migration files>` is built once (by whichever test
//! binary gets there first, under an advisory lock on the `postgres` database): created under a
//! temporary name, migrated with `coordinator::store::migrate`, disconnected, then renamed into place,
//! so a half-built template is never used. Each test then runs
//! `CREATE DATABASE test_<uuid> TEMPLATE <template>`, which is a file copy, and drops it at the end.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use diesel::sql_types::{BigInt, Text};
use diesel::{sql_query, Connection, PgConnection, QueryableByName, RunQueryDsl};

use crate::pg_server_url;

/// Key of the advisory lock that serializes template builds across test binaries.
const TEMPLATE_LOCK_KEY: i64 = 0x5a6a_7e57_0000_0001;

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
    /// A fresh database with the coordinator's schema.
    pub fn new() -> TestDb {
        Self::try_new().expect("creating a test database")
    }

    /// A fresh database with the coordinator's schema.
    pub fn try_new() -> anyhow::Result<TestDb> {
        let template = template()?;
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
                    eprintln!("e2e: CREATE DATABASE {name} failed ({e}), retrying");
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

    /// Only a name: no database is created (to check that the coordinator creates a missing one).
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

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
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
            eprintln!("e2e: could not drop test database {}: {e:#}", self.name);
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

/// The directory of the coordinator's migrations.
pub fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/migrations")
}

/// FNV-1a over the relative paths and contents of every file under the migrations directory.
pub fn migrations_hash() -> String {
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
    let root = migrations_dir();
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap_or(file);
        feed(relative.to_string_lossy().as_bytes());
        feed(&[0]);
        feed(&std::fs::read(file).unwrap_or_default());
        feed(&[0]);
    }
    format!("{hash:016x}")
}

/// The name of the migrated template database, building it if this is the first test to need it.
pub fn template() -> anyhow::Result<String> {
    static TEMPLATE: Mutex<Option<String>> = Mutex::new(None);
    let mut cached = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(name) = cached.as_ref() {
        return Ok(name.clone());
    }
    let name = format!("saga_test_template_{}", migrations_hash());
    let mut admin = admin_connection()?;
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin)?;
    let built = build_template(&mut admin, &name);
    let unlocked = sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut admin);
    built?;
    unlocked?;
    drop_stale_templates(&mut admin, &name);
    *cached = Some(name.clone());
    Ok(name)
}

/// Templates of earlier migration sets are dead weight once the migrations changed: drop them,
/// leaving any that a test run of another checkout still uses (its DROP fails and is ignored).
fn drop_stale_templates(admin: &mut PgConnection, current: &str) {
    let stale: Vec<DatabaseName> = sql_query(
        "SELECT datname FROM pg_database \
         WHERE datname LIKE 'saga\\_test\\_template\\_%' AND datname <> $1 \
           AND datname NOT LIKE '%\\_building'",
    )
    .bind::<Text, _>(current)
    .load(admin)
    .unwrap_or_default();
    for db in stale {
        let dropped =
            sql_query(format!("DROP DATABASE IF EXISTS \"{}\"", db.datname)).execute(admin);
        if let Err(e) = dropped {
            eprintln!("e2e: leaving the old template {}: {e}", db.datname);
        }
    }
}

fn build_template(admin: &mut PgConnection, name: &str) -> anyhow::Result<()> {
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
    // Migrations may start runtimes or pools of their own: run them on a thread of their own.
    let migrated = std::thread::spawn(move || coordinator::store::migrate(&url))
        .join()
        .map_err(|_| anyhow::anyhow!("coordinator::store::migrate panicked"))?;
    migrated.with_context(|| format!("migrating the template database {building}"))?;
    // Pools may linger for a moment after `migrate` returns; nothing may stay connected to a template.
    for _ in 0..100 {
        terminate_connections(admin, &building)?;
        match sql_query(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .execute(admin)
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                eprintln!("e2e: renaming the template failed ({e}), retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    anyhow::bail!("could not rename {building} to {name}: connections kept coming back")
}
