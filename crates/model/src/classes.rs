//! The CIFAR-10 label set.

/// Number of classes the network predicts: one name below for each of its outputs.
pub const NUM_CLASSES: usize = crate::arch::CLASSES;

/// Class names in the canonical CIFAR-10 label order (label `i` is `CLASSES[i]`).
pub const CLASSES: [&str; NUM_CLASSES] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The label index of a class name, if it is one of [`CLASSES`].
pub fn class_index(name: &str) -> Option<usize> {
    CLASSES.iter().position(|c| *c == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order() {
        assert_eq!(CLASSES[0], "airplane");
        assert_eq!(CLASSES[9], "truck");
        assert_eq!(class_index("cat"), Some(3));
        assert_eq!(class_index("Cat"), None);
    }
}
