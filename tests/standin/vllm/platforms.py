"""``vllm.platforms.current_platform`` of a CUDA machine: sleep mode is available."""


class _CudaPlatform:
    device_type = "cuda"

    def is_cpu(self) -> bool:
        return False

    def is_sleep_mode_available(self) -> bool:
        return True


current_platform = _CudaPlatform()
