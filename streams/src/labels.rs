//! The closed sets of bucket labels of contract §3, in their published order.

/// Defines an enum over a closed set of wire labels, with its order and its parse.
///
/// The order of the variants is the order of every distribution in the output.
macro_rules! labels {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every label, in published order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label as it travels on the wire.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }

            /// The label's position in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }

            /// The variant at `index` in [`Self::ALL`], if any.
            pub fn from_index(index: usize) -> Option<Self> {
                Self::ALL.get(index).copied()
            }

            /// Parses a wire label; `None` when it is not one of this set.
            pub fn parse(label: &str) -> Option<Self> {
                match label { $($label => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.label())
            }
        }
    };
}

labels! {
    /// How long a task ran.
    ExecutionTime {
        Under100ms = "<100ms",
        To500ms = "100-500ms",
        To1s = "500ms-1s",
        To5s = "1-5s",
        To10s = "5-10s",
        To30s = "10-30s",
        To1m = "30s-1m",
        Over1m = ">1m",
    }
}

labels! {
    /// An amount of gas used or of steps computed.
    Magnitude {
        Under100K = "<100K",
        To1M = "100K-1M",
        To10M = "1M-10M",
        To100M = "10M-100M",
        Over100M = ">100M",
    }
}

labels! {
    /// Peak memory used by an invoiced computation.
    Memory {
        Under64MB = "<64MB",
        To256MB = "64-256MB",
        To1GB = "256MB-1GB",
        Over1GB = ">1GB",
    }
}

labels! {
    /// Tasks a node is running right now.
    ActiveTasks {
        Zero = "0",
        One = "1",
        To3 = "2-3",
        To5 = "4-5",
        Over5 = ">5",
    }
}

labels! {
    /// Tasks a node has run in all.
    TotalTasks {
        Zero = "0",
        To10 = "1-10",
        To50 = "10-50",
        To100 = "50-100",
        To500 = "100-500",
        To1K = "500-1K",
        Over1K = ">1K",
    }
}

labels! {
    /// The continent a node reports.
    Continent {
        Africa = "AF",
        Antarctica = "AN",
        Asia = "AS",
        Europe = "EU",
        NorthAmerica = "NA",
        Oceania = "OC",
        SouthAmerica = "SA",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_parses_back_to_its_variant_in_order() {
        for (i, v) in ExecutionTime::ALL.iter().enumerate() {
            assert_eq!(ExecutionTime::parse(v.label()), Some(*v));
            assert_eq!(v.index(), i);
        }
        assert_eq!(Magnitude::parse(">100M"), Some(Magnitude::Over100M));
        assert_eq!(Memory::parse("256MB-1GB"), Some(Memory::To1GB));
        assert_eq!(TotalTasks::parse("500-1K"), Some(TotalTasks::To1K));
        assert_eq!(ActiveTasks::from_index(4), Some(ActiveTasks::Over5));
        assert_eq!(Continent::parse("eu"), None, "labels are case-sensitive");
        assert_eq!(Magnitude::parse("unknown"), None);
    }
}
