"""Timesteps as files, and the two methods that make them for a solver at an exact NFE on a field.

- `genkit.schedules.file`: the saved-schedule format (SavedSchedule, save, read, load for a field);
- `genkit.schedules.gits`: GITS, a training-free dynamic-programming search (`genkit schedule search`);
- `genkit.schedules.ld3`: LD3, timesteps fitted by backpropagation through the solve (`genkit schedule learn`).

Both are measured against the teacher of samplers.teacher; docs/samplers.md §8.
"""
