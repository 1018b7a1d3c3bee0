"""Data-free KD attacks of Nasty Teacher §4.4: DAFL and DeepInversion."""
