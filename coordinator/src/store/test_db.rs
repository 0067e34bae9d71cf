//! For tests: a migrated coordinator database of its own per test (testkit's `TestDb`), and what
//! every store test does with it. Test files add their own `impl Db` blocks for their rows.

use diesel::connection::SimpleConnection;
use testkit::{Schema, TestDb};

use super::{Pool, Queries};

/// The coordinator's schema, as `TestDb` migrates it.
pub const SCHEMA: Schema = Schema {
    name: "saga",
    migrations: super::MIGRATIONS,
    migrations_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/migrations"),
};

/// A test's database and a pool on it; the database is dropped with it.
pub struct Db {
    pub pool: Pool,
    _db: TestDb,
}

impl Db {
    /// A new migrated database, with a pool of `connections`.
    pub fn new(connections: u32) -> Db {
        let db = TestDb::new(SCHEMA);
        let pool = super::pool(db.url(), connections).expect("pool");
        Db { pool, _db: db }
    }

    pub fn queries(&self) -> Queries {
        Queries::new(self.pool.clone())
    }

    /// Runs `sql` (one or more statements), failing the test if it fails.
    pub fn run(&self, sql: &str) {
        self.pool
            .get()
            .expect("connection")
            .batch_execute(sql)
            .expect("statement");
    }
}
