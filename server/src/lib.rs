//! Sluice server driver.
