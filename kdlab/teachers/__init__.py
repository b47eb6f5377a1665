"""Teachers: fingerprinted by their config and data, trained once (and tracked) or loaded from a checkpoint or an
MLflow URI, cached on disk and reused, and their outputs over the data computed once and cached."""

from kdlab.teachers.cache import teacher_cache_dir, teacher_outputs
from kdlab.teachers.fingerprint import teacher_fingerprint
from kdlab.teachers.get import Teacher, get_teacher, teacher_builder

__all__ = ["Teacher", "get_teacher", "teacher_builder", "teacher_fingerprint", "teacher_outputs", "teacher_cache_dir"]
