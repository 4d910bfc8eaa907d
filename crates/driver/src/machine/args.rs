//! `Commands`: one or several shell commands as a method argument.

/// One or several shell commands (`succeed("a")`, `succeed(["a", "b"])`, `succeed(&vec)`).
pub trait Commands {
    /// The commands, in order.
    fn commands(&self) -> Vec<String>;
}

impl Commands for &str {
    fn commands(&self) -> Vec<String> {
        vec![self.to_string()]
    }
}

impl Commands for String {
    fn commands(&self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl Commands for &String {
    fn commands(&self) -> Vec<String> {
        vec![(*self).clone()]
    }
}

impl<const N: usize> Commands for [&str; N] {
    fn commands(&self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl Commands for &[&str] {
    fn commands(&self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

impl Commands for Vec<String> {
    fn commands(&self) -> Vec<String> {
        self.clone()
    }
}

impl Commands for &[String] {
    fn commands(&self) -> Vec<String> {
        self.to_vec()
    }
}
