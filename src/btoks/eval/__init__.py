"""MMEB-V2 evaluation: dataset registry, ranking metrics, run reports and run comparison."""
