// `sqlx::migrate!` embeds the migration files at compile time; rebuild when they change
// (including when a new one is added), as sqlx's documentation asks.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
