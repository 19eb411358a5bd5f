fn main() {
    println!("apivip");
}
