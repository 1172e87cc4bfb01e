//! `sqlx::migrate!` embeds migrations/ at compile time: a new or changed migration must
//! rebuild the kit, not only a changed source file.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
