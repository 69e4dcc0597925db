"""Binary alloys on FCC lattices: geometry, energy backends, the alloy system."""
