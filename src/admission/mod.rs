//! Pure: AdmissionRequest (+ a read-only cache snapshot) -> AdmissionResponse, one file per kind.
