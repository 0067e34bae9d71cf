//! The migrations under `schema/migrations` are embedded by `embed_migrations!`; a new or changed
//! migration must rebuild the crate even when no Rust file changed.
fn main() {
    println!("cargo:rerun-if-changed=../schema/migrations");
}
