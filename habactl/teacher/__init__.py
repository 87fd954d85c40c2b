"""Teachers: networks with batch norm trained on the real data, read by the
teacher-driven objectives and by relabelling (docs/teacher.md)."""

from habactl.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "header": ["TeacherError", "TeacherInfo", "describe_info", "peek_teacher"],
        "file": ["Teacher", "bind_teacher", "check_teacher_for", "load_teacher", "save_teacher"],
        "train": ["TeacherEpoch", "TeacherSettings", "train_teacher"],
    },
)
