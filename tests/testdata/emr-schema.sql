-- EMR-like synthetic schema and vocabularies.
-- Used by make-emr-db.sh; all data is synthetic (random), no real persons.
\set ON_ERROR_STOP on

DROP TABLE IF EXISTS medications, lab_results, encounters, patients, vocab, first_names, last_names, streets, cities, lab_codes, drugs CASCADE;

CREATE TABLE vocab (arr text[] NOT NULL);
-- PLAIN: keep the array un-toasted, else every subscript detoasts it (14x slower fill)
ALTER TABLE vocab ALTER arr SET STORAGE PLAIN;
-- Ordered roughly by frequency: picks are skewed to the front (Zipf-like) so the
-- text compresses like prose, not like uniform random words.
INSERT INTO vocab VALUES (string_to_array(
'the of and to a in with patient is was for no on reports denies without has at as history by be pain noted '
'are not this from or left right normal bilateral mild moderate severe daily mg plan continue follow up today '
'exam symptoms stable since last week weeks days months years ago prior current medication medications '
'blood pressure heart rate temperature respiratory oxygen saturation room air alert oriented times three '
'acute chronic appears well comfortable distress lungs clear auscultation rales wheezes rhonchi regular rhythm '
'murmurs gallops abdomen soft nontender nondistended bowel sounds present extremities edema cyanosis clubbing '
'neurologic intact cranial nerves grossly strength sensation reflexes symmetric gait steady skin warm dry rash '
'lesions head atraumatic normocephalic eyes pupils equal round reactive light accommodation ears nose throat '
'mucous membranes moist neck supple lymphadenopathy thyromegaly chest wall tenderness cardiovascular '
'assessment hypertension diabetes mellitus type hyperlipidemia coronary artery disease congestive failure '
'atrial fibrillation chronic obstructive pulmonary asthma pneumonia urinary tract infection kidney injury '
'anemia hypothyroidism depression anxiety osteoarthritis back headache migraine dizziness syncope fatigue '
'nausea vomiting diarrhea constipation fever chills cough shortness breath dyspnea exertion orthopnea '
'paroxysmal nocturnal palpitations chest tightness radiating arm jaw diaphoresis abdominal epigastric '
'dysuria frequency urgency hematuria weight loss gain appetite sleep insomnia tremor numbness tingling '
'weakness fall trauma injury fracture sprain laceration wound healing infection cellulitis abscess drainage '
'recommend recommended start started stop stopped increase increased decrease decreased dose titrate '
'monitor monitoring check labs ordered order obtain repeat imaging xray ct mri ultrasound echocardiogram '
'electrocardiogram sinus tachycardia bradycardia changes ischemia troponin negative positive within limits '
'elevated low high result results reviewed discussed counseled educated understanding agrees questions '
'answered return precautions emergency department admit admitted discharge discharged home outpatient '
'clinic primary care physician specialist referral cardiology nephrology endocrinology pulmonology '
'gastroenterology neurology psychiatry orthopedics physical therapy occupational social work nutrition '
'diet exercise smoking cessation alcohol use tobacco former current never quit pack family mother father '
'sibling cancer stroke lives alone spouse children works retired allergies known drug penicillin sulfa '
'latex seasonal vaccination influenza pneumococcal tetanus covid booster screening colonoscopy mammogram '
'metformin lisinopril amlodipine atorvastatin metoprolol losartan hydrochlorothiazide furosemide insulin '
'glargine aspirin clopidogrel warfarin apixaban levothyroxine omeprazole pantoprazole sertraline '
'escitalopram gabapentin tramadol acetaminophen ibuprofen prednisone albuterol inhaler amoxicillin '
'azithromycin ciprofloxacin nitrofurantoin twice once three four times every hours needed tablet capsule '
'oral subcutaneous intravenous injection units dosage adherence compliance side effects tolerated well '
'hemoglobin a1c creatinine gfr potassium sodium glucose cholesterol ldl hdl triglycerides tsh inr platelet '
'white count liver enzymes alt ast bilirubin albumin urinalysis culture sensitivity pending', ' '));

CREATE TABLE first_names (arr text[] NOT NULL);
ALTER TABLE first_names ALTER arr SET STORAGE PLAIN;
INSERT INTO first_names VALUES (string_to_array(
'James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan Joseph '
'Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty Anthony Margaret Mark Sandra '
'Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua Michelle Kenneth Carol Kevin Amanda Brian Dorothy '
'George Melissa Timothy Deborah Ronald Stephanie Edward Rebecca Jason Sharon Jeffrey Laura Ryan Cynthia Jacob '
'Kathleen Gary Amy Nicholas Angela Eric Shirley Jonathan Anna Stephen Brenda Larry Pamela Justin Emma Scott '
'Nicole Brandon Helen Benjamin Samantha Samuel Katherine Gregory Christine Alexander Debra Frank Rachel Patrick '
'Carolyn Raymond Janet Jack Catherine Dennis Maria Jerry Heather Tyler Diane Aaron Ruth Jose Julie Adam Olivia '
'Henry Joyce Nathan Virginia Douglas Victoria Zachary Kelly Peter Lauren Kyle Christina Ethan Joan Walter Evelyn '
'Noah Judith Jeremy Megan Christian Andrea Keith Cheryl Roger Hannah Terry Jacqueline Gerald Martha Harold Gloria '
'Sean Teresa Austin Ann Carl Sara Arthur Madison Lawrence Frances Dylan Kathryn Jesse Janice Jordan Jean Bryan '
'Abigail Billy Alice Joe Julia Bruce Judy Gabriel Sophia Logan Grace Albert Denise Willie Amber Alan Doris Juan '
'Marilyn Wayne Danielle Elijah Beverly Randy Isabella Roy Theresa Vincent Diana Ralph Natalie Eugene Brittany', ' '));

CREATE TABLE last_names (arr text[] NOT NULL);
ALTER TABLE last_names ALTER arr SET STORAGE PLAIN;
INSERT INTO last_names VALUES (string_to_array(
'Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson '
'Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis '
'Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera '
'Campbell Mitchell Carter Roberts Gomez Phillips Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart '
'Morris Morales Murphy Cook Rogers Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim '
'Cox Ward Richardson Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo '
'Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell Coleman Butler '
'Henderson Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds '
'Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens Murray Ford '
'Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells Vargas Henry Chen Freeman '
'Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon '
'Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice '
'Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn Kelley Spencer', ' '));

CREATE TABLE streets (arr text[] NOT NULL);
ALTER TABLE streets ALTER arr SET STORAGE PLAIN;
INSERT INTO streets VALUES (string_to_array(
'Main,Oak,Pine,Maple,Cedar,Elm,Washington,Lake,Hill,Park,Walnut,Sunset,Lincoln,Jackson,Church,River,'
'Highland,Forest,Meadow,Spring,Chestnut,Franklin,Willow,Ridge,Adams,Jefferson,Madison,Valley,Birch,Center,'
'Mill,North,South,Railroad,School,Union,Prospect,Dogwood,Hickory,Laurel', ','));

CREATE TABLE cities (arr text[] NOT NULL);
ALTER TABLE cities ALTER arr SET STORAGE PLAIN;
INSERT INTO cities VALUES (string_to_array(
'Springfield,Riverside,Franklin,Greenville,Bristol,Clinton,Fairview,Salem,Madison,Georgetown,Arlington,'
'Ashland,Dover,Oxford,Jackson,Burlington,Manchester,Milton,Newport,Auburn,Dayton,Lexington,Centerville,'
'Winchester,Kingston,Hudson,Marion,Clayton,Mount Vernon,Lebanon', ','));

-- (code, name, unit, low, high)
CREATE TABLE lab_codes (code text, name text, unit text, lo numeric, hi numeric);
INSERT INTO lab_codes VALUES
('2345-7','Glucose','mg/dL',70,99),('2160-0','Creatinine','mg/dL',0.6,1.3),('3094-0','BUN','mg/dL',7,20),
('2951-2','Sodium','mmol/L',135,145),('2823-3','Potassium','mmol/L',3.5,5.1),('2075-0','Chloride','mmol/L',98,107),
('2028-9','CO2','mmol/L',22,29),('17861-6','Calcium','mg/dL',8.6,10.3),('1751-7','Albumin','g/dL',3.5,5.0),
('1975-2','Bilirubin total','mg/dL',0.1,1.2),('1742-6','ALT','U/L',7,56),('1920-8','AST','U/L',10,40),
('6768-6','Alkaline phosphatase','U/L',44,147),('718-7','Hemoglobin','g/dL',12,17.5),('4544-3','Hematocrit','%',36,50),
('6690-2','WBC','10*3/uL',4.5,11),('777-3','Platelets','10*3/uL',150,400),('789-8','RBC','10*6/uL',4.2,5.9),
('4548-4','Hemoglobin A1c','%',4,5.6),('2093-3','Cholesterol total','mg/dL',125,200),('13457-7','LDL','mg/dL',0,100),
('2085-9','HDL','mg/dL',40,90),('2571-8','Triglycerides','mg/dL',0,150),('3016-3','TSH','mIU/L',0.4,4.0),
('6301-6','INR','',0.8,1.1),('33914-3','eGFR','mL/min/1.73m2',60,120),('2157-6','CK','U/L',30,200),
('10839-9','Troponin I','ng/mL',0,0.04),('30934-4','BNP','pg/mL',0,100),('1988-5','CRP','mg/L',0,10),
('2276-4','Ferritin','ng/mL',20,250),('2498-4','Iron','ug/dL',60,170),('2132-9','Vitamin B12','pg/mL',200,900),
('1989-3','Vitamin D 25-OH','ng/mL',30,100),('5902-2','PT','s',11,13.5),('3173-2','aPTT','s',25,35),
('2532-0','LDH','U/L',140,280),('2885-2','Protein total','g/dL',6,8.3),('19123-9','Magnesium','mg/dL',1.7,2.2),
('2777-1','Phosphate','mg/dL',2.5,4.5);

-- (atc, name, strength, unit, route)
CREATE TABLE drugs (atc text, name text, strength numeric, unit text, route text);
INSERT INTO drugs VALUES
('A10BA02','Metformin',500,'mg','oral'),('C09AA03','Lisinopril',10,'mg','oral'),('C08CA01','Amlodipine',5,'mg','oral'),
('C10AA05','Atorvastatin',20,'mg','oral'),('C07AB02','Metoprolol',25,'mg','oral'),('C09CA01','Losartan',50,'mg','oral'),
('C03AA03','Hydrochlorothiazide',25,'mg','oral'),('C03CA01','Furosemide',40,'mg','oral'),('A10AE04','Insulin glargine',10,'units','subcutaneous'),
('B01AC06','Aspirin',81,'mg','oral'),('B01AC04','Clopidogrel',75,'mg','oral'),('B01AA03','Warfarin',5,'mg','oral'),
('B01AF02','Apixaban',5,'mg','oral'),('H03AA01','Levothyroxine',50,'mcg','oral'),('A02BC01','Omeprazole',20,'mg','oral'),
('A02BC02','Pantoprazole',40,'mg','oral'),('N06AB06','Sertraline',50,'mg','oral'),('N06AB10','Escitalopram',10,'mg','oral'),
('N03AX12','Gabapentin',300,'mg','oral'),('N02AX02','Tramadol',50,'mg','oral'),('N02BE01','Acetaminophen',500,'mg','oral'),
('M01AE01','Ibuprofen',400,'mg','oral'),('H02AB07','Prednisone',10,'mg','oral'),('R03AC02','Albuterol',90,'mcg','inhaled'),
('J01CA04','Amoxicillin',500,'mg','oral'),('J01FA10','Azithromycin',250,'mg','oral'),('J01MA02','Ciprofloxacin',500,'mg','oral'),
('J01XE01','Nitrofurantoin',100,'mg','oral'),('C01AA05','Digoxin',0.125,'mg','oral'),('C03DA01','Spironolactone',25,'mg','oral'),
('A10BJ02','Liraglutide',1.2,'mg','subcutaneous'),('A10BK01','Dapagliflozin',10,'mg','oral'),('N05BA12','Alprazolam',0.5,'mg','oral'),
('N05CF02','Zolpidem',5,'mg','oral'),('R06AX27','Desloratadine',5,'mg','oral'),('M04AA01','Allopurinol',100,'mg','oral'),
('G04CA02','Tamsulosin',0.4,'mg','oral'),('C01DA14','Isosorbide mononitrate',30,'mg','oral'),('J01DB01','Cefalexin',500,'mg','oral'),
('N02AA05','Oxycodone',5,'mg','oral');

CREATE TABLE patients (
    id               bigint PRIMARY KEY,
    mrn              text NOT NULL,
    first_name       text NOT NULL,
    last_name        text NOT NULL,
    sex              char(1) NOT NULL,
    date_of_birth    date NOT NULL,
    address_line     text NOT NULL,
    city             text NOT NULL,
    postal_code      text NOT NULL,
    phone            text NOT NULL,
    email            text NOT NULL,
    insurance_number text NOT NULL,
    created_at       timestamptz NOT NULL
);

CREATE TABLE encounters (
    id             bigint PRIMARY KEY,
    patient_id     bigint NOT NULL,
    encounter_at   timestamptz NOT NULL,
    department     text NOT NULL,
    provider       text NOT NULL,
    diagnosis_code text NOT NULL,
    notes          text NOT NULL
);

CREATE TABLE lab_results (
    id           bigint PRIMARY KEY,
    patient_id   bigint NOT NULL,
    encounter_id bigint NOT NULL,
    loinc_code   text NOT NULL,
    test_name    text NOT NULL,
    value        numeric(10,3) NOT NULL,
    unit         text NOT NULL,
    ref_low      numeric NOT NULL,
    ref_high     numeric NOT NULL,
    flag         text,
    specimen_id  text NOT NULL,
    resulted_at  timestamptz NOT NULL
);

CREATE TABLE medications (
    id          bigint PRIMARY KEY,
    patient_id  bigint NOT NULL,
    atc_code    text NOT NULL,
    drug_name   text NOT NULL,
    dose        text NOT NULL,
    route       text NOT NULL,
    frequency   text NOT NULL,
    start_date  date NOT NULL,
    end_date    date,
    prescriber  text NOT NULL,
    instructions text NOT NULL
);
