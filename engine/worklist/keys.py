"""The Modality Worklist keys radflow answers: PS3.4 Table K.6-1 (and the IHE Scheduled
Workflow set, which is a subset of it).

Owns two lists and nothing else: :data:`MATCHING_KEYS`, the keys whose values radflow matches
on, and :data:`RETURN_KEYS` / :data:`SPS_RETURN_KEYS`, every standard return key at the top level
and inside the Scheduled Procedure Step Sequence item. A standard return key radflow keeps no
value for is answered empty (zero length) and, when the query gives it a value, matched
universally: modality software sends such keys by default (Pregnancy Status, Patient Weight,
Medical Alerts...) and a Pending Warning (0xFF01) for them makes some of it mishandle the
association. Keys outside these lists that carry a value still get 0xFF01. It must not match,
answer or touch the store (see :mod:`engine.worklist.query`).
"""

from __future__ import annotations

from typing import Final

#: keys whose values are matched (PS3.4 C.2.2.2: single value, wildcard, range, list, sequence)
MATCHING_KEYS: Final[tuple[str, ...]] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "AccessionNumber", "RequestedProcedureID", "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence", "StudyInstanceUID", "ReferringPhysicianName",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
)
#: matched inside the Scheduled Procedure Step Sequence item
SPS_MATCHING_KEYS: Final[tuple[str, ...]] = (
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "Modality", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription", "ScheduledStationName", "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID", "ScheduledProcedureStepStatus",
)

#: PS3.4 Table K.6-1, top level, by module
RETURN_KEYS: Final[frozenset[str]] = frozenset({
    # SOP Common
    "SpecificCharacterSet", "TimezoneOffsetFromUTC",
    # Scheduled Procedure Step
    "ScheduledProcedureStepSequence",
    # Requested Procedure
    "RequestedProcedureID", "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence", "RequestedProcedureComments",
    "RequestedProcedureCodeSequence", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferencedStudySequence", "RequestedProcedureDescription", "RequestedProcedurePriority",
    "PatientTransportArrangements", "RequestedProcedureLocation", "ConfidentialityCode",
    "ReportingPriority", "NamesOfIntendedRecipientsOfResults",
    "IntendedRecipientsOfResultsIdentificationSequence",
    # Imaging Service Request
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "RequestingPhysician",
    "RequestingPhysicianIdentificationSequence", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "RequestingService",
    "RequestingServiceCodeSequence", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "OrderPlacerIdentifierSequence",
    "OrderFillerIdentifierSequence", "ImagingServiceRequestComments",
    "IssueDateOfImagingServiceRequest", "IssueTimeOfImagingServiceRequest", "OrderEnteredBy",
    "OrderEntererLocation", "OrderCallbackPhoneNumber",
    # Visit Identification, Status, Relationship, Admission
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "VisitStatusID", "CurrentPatientLocation",
    "PatientInstitutionResidence", "VisitComments", "ReferencedPatientSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "RouteOfAdmissions",
    "AdmittingDate", "AdmittingTime",
    # Patient Identification
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "MedicalRecordLocator",
    # Patient Demographic
    "PatientAge", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientSize",
    "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank",
    "BranchOfService", "CountryOfResidence", "RegionOfResidence", "EthnicGroup", "Occupation",
    "PatientComments", "ConfidentialityConstraintOnPatientDataDescription",
    "PatientPrimaryLanguageCodeSequence", "PatientReligiousPreference",
    "PatientSpeciesDescription", "PatientBreedDescription", "ResponsiblePerson",
    "ResponsiblePersonRole", "ResponsibleOrganization", "PatientSexNeutered",
    # Patient Medical
    "PatientState", "PregnancyStatus", "MedicalAlerts", "Allergies", "SpecialNeeds",
    "SmokingStatus", "AdditionalPatientHistory", "LastMenstrualDate",
    "PertinentDocumentsSequence",
})
#: PS3.4 Table K.6-1, inside the Scheduled Procedure Step Sequence item
SPS_RETURN_KEYS: Final[frozenset[str]] = frozenset({
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepEndDate",
    "ScheduledProcedureStepEndTime", "Modality", "AnatomicalOrientationType",
    "ScheduledPerformingPhysicianName", "ScheduledPerformingPhysicianIdentificationSequence",
    "ScheduledProcedureStepDescription", "ScheduledStationName",
    "ScheduledProcedureStepLocation", "ReferencedDefinedProtocolSequence",
    "ScheduledProtocolCodeSequence", "PreMedication", "ScheduledProcedureStepID",
    "RequestedContrastAgent", "ScheduledProcedureStepStatus",
    "CommentsOnTheScheduledProcedureStep",
})
