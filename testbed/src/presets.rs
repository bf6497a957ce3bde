//! Inter-region delays for the emulator, from a public measurement campaign of
//! round-trip times between cloud regions (medians, February 2022; see
//! shared/wan-presets.md). One-way delay is half the round trip.

/// A cloud region of the presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// US East.
    UsEast,
    /// US West.
    UsWest,
    /// Europe West.
    EuWest,
    /// Asia Pacific, north-east.
    ApNortheast,
    /// Asia Pacific, south-east.
    ApSoutheast,
    /// South America, east.
    SaEast,
}

impl Region {
    /// The region's id as datacenter ids use it: `us-east`.
    pub fn id(self) -> &'static str {
        match self {
            Region::UsEast => "us-east",
            Region::UsWest => "us-west",
            Region::EuWest => "eu-west",
            Region::ApNortheast => "ap-northeast",
            Region::ApSoutheast => "ap-southeast",
            Region::SaEast => "sa-east",
        }
    }
}

/// A set of regions to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// us-east, eu-west, ap-northeast.
    ThreeRegions,
    /// us-east, us-west, eu-west, ap-northeast, sa-east.
    FiveRegions,
    /// All six regions.
    SixRegions,
}

impl Preset {
    /// The regions, in order.
    pub fn regions(self) -> &'static [Region] {
        use Region::*;
        match self {
            Preset::ThreeRegions => &[UsEast, EuWest, ApNortheast],
            Preset::FiveRegions => &[UsEast, UsWest, EuWest, ApNortheast, SaEast],
            Preset::SixRegions => &[UsEast, UsWest, EuWest, ApNortheast, ApSoutheast, SaEast],
        }
    }
}

/// Measured round-trip time between two regions, in milliseconds (us-west to
/// ap-northeast is the table's estimate).
fn rtt_ms(a: Region, b: Region) -> f64 {
    use Region::*;
    match ordered(a, b) {
        (x, y) if x == y => 0.0,
        (UsEast, UsWest) => 64.0,
        (UsEast, EuWest) => 66.0,
        (UsEast, ApNortheast) => 145.0,
        (UsEast, ApSoutheast) => 197.0,
        (UsEast, SaEast) => 114.0,
        (UsWest, EuWest) => 126.0,
        (UsWest, ApNortheast) => 97.0,
        (UsWest, ApSoutheast) => 139.0,
        (UsWest, SaEast) => 182.0,
        (EuWest, ApNortheast) => 199.0,
        (EuWest, ApSoutheast) => 255.0,
        (EuWest, SaEast) => 176.0,
        (ApNortheast, ApSoutheast) => 109.0,
        (ApNortheast, SaEast) => 256.0,
        (ApSoutheast, SaEast) => 312.0,
        _ => unreachable!("every pair of regions is listed"),
    }
}

/// The pair in table order (the tables list each pair once).
fn ordered(a: Region, b: Region) -> (Region, Region) {
    if (a as u8) <= (b as u8) {
        (a, b)
    } else {
        (b, a)
    }
}

/// One-way delay between two regions, in milliseconds.
pub fn one_way_ms(a: Region, b: Region) -> f64 {
    rtt_ms(a, b) / 2.0
}

/// The speed-of-light floor of the round trip between two regions, in
/// milliseconds: great-circle distance over 2/3 c, there and back. No system can
/// beat it.
fn floor_rtt_ms(a: Region, b: Region) -> f64 {
    use Region::*;
    match ordered(a, b) {
        (x, y) if x == y => 0.0,
        (UsEast, UsWest) => 35.0,
        (UsEast, EuWest) => 55.0,
        (UsEast, ApNortheast) => 109.0,
        (UsEast, ApSoutheast) => 157.0,
        (UsEast, SaEast) => 76.0,
        (UsWest, EuWest) => 73.0,
        (UsWest, ApNortheast) => 80.0,
        (UsWest, ApSoutheast) => 126.0,
        (UsWest, SaEast) => 107.0,
        (EuWest, ApNortheast) => 96.0,
        (EuWest, ApSoutheast) => 172.0,
        (EuWest, SaEast) => 94.0,
        (ApNortheast, ApSoutheast) => 78.0,
        (ApNortheast, SaEast) => 186.0,
        (ApSoutheast, SaEast) => 134.0,
        _ => unreachable!("every pair of regions is listed"),
    }
}

/// The speed-of-light floor of the one-way delay between two regions, in
/// milliseconds.
pub fn floor_one_way_ms(a: Region, b: Region) -> f64 {
    floor_rtt_ms(a, b) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_symmetric_and_follow_the_table() {
        let all = Preset::SixRegions.regions();
        for &a in all {
            for &b in all {
                assert_eq!(one_way_ms(a, b), one_way_ms(b, a));
                assert_eq!(one_way_ms(a, b) == 0.0, a == b);
            }
        }
        assert_eq!(one_way_ms(Region::UsEast, Region::EuWest), 33.0);
        assert_eq!(one_way_ms(Region::ApSoutheast, Region::SaEast), 156.0);
        for &a in all {
            for &b in all {
                assert_eq!(floor_one_way_ms(a, b), floor_one_way_ms(b, a));
                assert!(floor_one_way_ms(a, b) <= one_way_ms(a, b));
            }
        }
    }
}
